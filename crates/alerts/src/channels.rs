//! Sending one event to one channel: a Standard Webhooks POST, a Slack incoming
//! webhook, or an e-mail through SMTP; and the check every outbound URL passes.
//!
//! Outbound safety: a webhook or Slack URL must be `http` or `https`; its host is
//! resolved and every address checked (no loopback, private, link-local, unique-local,
//! unspecified, multicast or broadcast address unless the operator allows private
//! targets); the connection is pinned to the checked address (no second lookup that
//! could answer differently), redirects are not followed, the whole call is bounded
//! by a timeout and at most [`MAX_RESPONSE_BYTES`] of the answer are read.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use crate::outbox::EventData;
use crate::seal::Sealer;
use crate::{ChannelKind, ChannelRecord, SmtpTls};

/// The most of a receiver's answer that is read (for the error message).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024;

/// What every channel send may use.
#[derive(Clone, Debug)]
pub struct SendSettings {
    pub timeout: Duration,
    /// Loopback and private addresses are allowed (tests, a relay on the LAN).
    pub allow_private_targets: bool,
}

/// Why a send failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    pub status_code: Option<u16>,
    pub message: String,
}

impl SendError {
    fn new(message: impl Into<String>) -> Self {
        Self { status_code: None, message: message.into() }
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10, shared address space
                || (o[0] == 198 && (o[1] & 0xfe) == 18)) // 198.18/15, benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// A checked outbound URL and the address to connect to.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: url::Url,
    pub host: String,
    pub addr: SocketAddr,
}

/// Parses and checks an outbound URL, resolving its host (see the module doc).
pub async fn check_url(raw: &str, allow_private: bool) -> Result<Target, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials before the host".into());
    }
    let host = url.host_str().ok_or("must name a host")?.to_owned();
    let port = url.port_or_known_default().ok_or("must have a port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((bare, port)))
            .await
            .map_err(|_| format!("resolving {host} timed out"))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let first = *addrs.first().ok_or_else(|| format!("{host} resolves to no address"))?;
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, a loopback, private or link-local address; \
             the operator can allow such targets with alerts.allow_private_targets",
            bad.ip()
        ));
    }
    Ok(Target { url, host: bare.to_owned(), addr: first })
}

/// Checks an e-mail address (`name@example.com` or `Name <name@example.com>`).
pub fn check_mailbox(address: &str) -> Result<(), String> {
    if address.len() > 320 {
        return Err("an address is at most 320 characters".into());
    }
    address.parse::<lettre::message::Mailbox>().map(|_| ()).map_err(|e| format!("invalid address {address:?}: {e}"))
}

/// A `whsec_` signing secret: 24 random bytes.
pub fn generate_webhook_secret() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("whsec_{}", STANDARD.encode(bytes)))
}

/// The Standard Webhooks signature of a message: `v1,` + base64 of HMAC-SHA256 keyed
/// by the secret's base64 part, over `id.timestamp.body`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD.decode(encoded).map_err(|_| "the signing secret is not base64 after whsec_".to_owned())?;
    let mut mac = hmac::Hmac::<sha2_11::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The Slack message of an event: a line of text (notifications, old clients) and
/// blocks (a header, the figures, the context).
pub fn slack_payload(event: &EventData) -> Value {
    let title = event.title();
    let mut fields = Vec::new();
    for (name, value) in event.figures() {
        fields.push(json!({ "type": "mrkdwn", "text": format!("*{name}*\n{value}") }));
    }
    json!({
        "text": title,
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": truncate(&title, 150), "emoji": false } },
            { "type": "section", "fields": fields.into_iter().take(10).collect::<Vec<_>>() },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("tollgate · event `{}` · {}", event.event_id, event.timestamp) }
            ] }
        ]
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_owned() } else { s.chars().take(max - 1).chain(['…']).collect() }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The e-mail of an event: subject, plain text, HTML.
pub fn email_parts(event: &EventData) -> (String, String, String) {
    let subject = format!("[tollgate] {}", event.title());
    let mut text = format!("{}\n\n", event.title());
    let mut rows = String::new();
    for (name, value) in event.figures() {
        text.push_str(&format!("{name}: {value}\n"));
        rows.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            html_escape(&name),
            html_escape(&value)
        ));
    }
    text.push_str(&format!("\nEvent {} at {}\n", event.event_id, event.timestamp));
    let html = format!(
        "<!doctype html><html><body><h2>{}</h2><table>{rows}</table><p><small>Event {} at {}</small></p></body></html>",
        html_escape(&event.title()),
        html_escape(&event.event_id),
        html_escape(&event.timestamp)
    );
    (subject, text, html)
}

/// The purposes secrets are sealed for (the associated data of each ciphertext).
pub fn seal_purpose(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Webhook => "alerts.webhook.signing_secret",
        ChannelKind::Slack => "alerts.slack.url",
        ChannelKind::Email => "alerts.email.smtp_password",
    }
}

fn open_secret(channel: &ChannelRecord, sealer: Option<&Sealer>) -> Result<Option<String>, SendError> {
    let Some(sealed) = &channel.sealed_secret else { return Ok(None) };
    let sealer =
        sealer.ok_or_else(|| SendError::new("no alerts master key is configured to open the channel's secret"))?;
    sealer.open(seal_purpose(channel.kind), sealed).map(Some).map_err(|e| SendError::new(e.to_string()))
}

/// Sends `event` (already serialised as `body`) to `channel` as delivery `message_id`.
/// Returns the receiver's status code, if it was HTTP.
pub async fn send(
    channel: &ChannelRecord,
    event: &EventData,
    body: &[u8],
    message_id: &str,
    now_secs: i64,
    sealer: Option<&Sealer>,
    settings: &SendSettings,
) -> Result<Option<u16>, SendError> {
    let secret = open_secret(channel, sealer)?;
    match channel.kind {
        ChannelKind::Webhook => {
            let url = channel.config.url.as_deref().ok_or_else(|| SendError::new("the webhook has no url"))?;
            let secret = secret.ok_or_else(|| SendError::new("the webhook has no signing secret"))?;
            let signature = sign(&secret, message_id, now_secs, body).map_err(SendError::new)?;
            let headers = [
                ("webhook-id", message_id.to_owned()),
                ("webhook-timestamp", now_secs.to_string()),
                ("webhook-signature", signature),
            ];
            post(url, body.to_vec(), &headers, settings).await.map(Some)
        }
        ChannelKind::Slack => {
            let url = secret.ok_or_else(|| SendError::new("the Slack channel has no webhook URL"))?;
            let payload = serde_json::to_vec(&slack_payload(event)).map_err(|e| SendError::new(e.to_string()))?;
            post(&url, payload, &[], settings).await.map(Some)
        }
        ChannelKind::Email => send_email(channel, event, secret, settings).await.map(|()| None),
    }
}

async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)], settings: &SendSettings) -> Result<u16, SendError> {
    let target = check_url(url, settings.allow_private_targets).await.map_err(SendError::new)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .no_proxy()
        .resolve(&target.host, target.addr)
        .user_agent("tollgate-alerts/1")
        .build()
        .map_err(|e| SendError::new(format!("cannot build an HTTP client: {}", e.without_url())))?;
    let mut request = client.post(target.url).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    // Never the URL in the error: a Slack URL is a secret, and errors are logged and stored.
    let mut response =
        request.send().await.map_err(|e| SendError::new(format!("request failed: {}", e.without_url())))?;
    let status = response.status().as_u16();
    let mut answer = Vec::new();
    while answer.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => answer.extend_from_slice(&chunk[..chunk.len().min(MAX_RESPONSE_BYTES - answer.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        let text = String::from_utf8_lossy(&answer);
        let shown: String = text.chars().take(200).collect();
        Err(SendError { status_code: Some(status), message: format!("receiver answered {status}: {shown}") })
    }
}

async fn send_email(
    channel: &ChannelRecord,
    event: &EventData,
    password: Option<String>,
    settings: &SendSettings,
) -> Result<(), SendError> {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let c = &channel.config;
    let host = c.smtp_host.as_deref().ok_or_else(|| SendError::new("the e-mail channel has no smtp_host"))?;
    let from: Mailbox = c
        .from
        .as_deref()
        .ok_or_else(|| SendError::new("the e-mail channel has no from address"))?
        .parse()
        .map_err(|e| SendError::new(format!("invalid from address: {e}")))?;
    let (subject, text, html) = email_parts(event);
    let mut builder = Message::builder().from(from).subject(subject);
    for to in &c.to {
        let to: Mailbox = to.parse().map_err(|e| SendError::new(format!("invalid to address {to:?}: {e}")))?;
        builder = builder.to(to);
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| SendError::new(format!("cannot build the message: {e}")))?;
    let tls = c.smtp_tls.unwrap_or_default();
    let transport = match tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| SendError::new(format!("smtp: {e}")))?,
        SmtpTls::Implicit => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(host).map_err(|e| SendError::new(format!("smtp: {e}")))?
        }
    };
    let default_port = match tls {
        SmtpTls::None => 25,
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
    };
    let mut transport = transport.port(c.smtp_port.unwrap_or(default_port)).timeout(Some(settings.timeout));
    if let (Some(user), Some(password)) = (&c.smtp_username, password) {
        transport = transport.credentials(Credentials::new(user.clone(), password));
    }
    let transport = transport.build();
    let sent = tokio::time::timeout(settings.timeout.saturating_mul(2), transport.send(message))
        .await
        .map_err(|_| SendError::new("smtp: timed out"))?;
    sent.map(|_| ()).map_err(|e| SendError::new(format!("smtp: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9/x", false).await.unwrap_err().contains("private"));
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("http://[::1]:9/x", false).await.is_err());
        assert!(check_url("ftp://example.com/", true).await.is_err());
        assert!(check_url("http://user:pw@127.0.0.1/", true).await.is_err());
        assert!(check_url("not a url", true).await.is_err());
    }

    #[test]
    fn the_signature_matches_the_specifications_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, id, 1614265330, body).expect("sign");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
