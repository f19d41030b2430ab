//! The pooled client to one upstream: an OpenAI-compatible one (`Authorization:
//! Bearer`) or an Anthropic one (`x-api-key` and `anthropic-version`), by
//! [`UpstreamAuth`].

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// Where the upstream is and how long to wait for it.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// Base URL including the version path, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The provider key tollgate sends upstream (never the client's tollgate key).
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and for each chunk of the body after it.
    pub read_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// How the provider key is sent.
    pub auth: UpstreamAuth,
    /// Headers sent on every call unless the passed-through client headers carry
    /// them already (Anthropic's `anthropic-version`).
    pub default_headers: Vec<(String, String)>,
}

/// How a provider key is presented to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <key>` (OpenAI and compatible servers).
    #[default]
    Bearer,
    /// `x-api-key: <key>` (Anthropic).
    XApiKey,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// Why a call to the upstream failed. All of these come from the upstream side.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream could not be reached: {0}")]
    Connect(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream response broke off: {0}")]
    Body(String),
    #[error("invalid upstream configuration: {0}")]
    Config(String),
}

impl UpstreamError {
    /// Whether trying again (here or on another upstream) may help.
    pub fn retryable(&self) -> bool {
        !matches!(self, UpstreamError::Config(_))
    }
}

/// The head of an upstream response and its body as a stream.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// `Retry-After` passed on when the provider sends one (its own 429s).
    pub retry_after: Option<String>,
    /// The provider's own id of the call (`x-request-id`), at most 200 visible ASCII
    /// characters.
    pub request_id: Option<String>,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>,
}

/// Whether the environment names a proxy for outgoing calls (`HTTPS_PROXY` and co.,
/// which reqwest honours); egress through a proxy keeps working as before.
fn proxy_in_environment() -> bool {
    ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// The paths tollgate calls on an upstream (their URLs are parsed once).
const KNOWN_PATHS: &[&str] =
    &["/chat/completions", "/completions", "/embeddings", "/models", "/responses", "/messages"];

/// A provider key as the upstream's [`UpstreamAuth`] presents it (`Authorization:
/// Bearer …` or `x-api-key`), built once and marked sensitive (HTTP/2 never indexes
/// it, and its `Debug` is redacted).
#[derive(Clone)]
pub struct ProviderAuth {
    name: reqwest::header::HeaderName,
    value: reqwest::header::HeaderValue,
}

impl std::fmt::Debug for ProviderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderAuth").field("header", &self.name).field("value", &"<redacted>").finish()
    }
}

impl ProviderAuth {
    /// The header `auth` presents `key` in; a key that is not a valid header value
    /// (control characters, non-ASCII) is a `Config` error that does not show it.
    pub fn new(auth: UpstreamAuth, key: &str) -> Result<Self, UpstreamError> {
        let (name, text) = match auth {
            UpstreamAuth::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {key}")),
            UpstreamAuth::XApiKey => (reqwest::header::HeaderName::from_static("x-api-key"), key.to_owned()),
            UpstreamAuth::ApiKey => (reqwest::header::HeaderName::from_static("api-key"), key.to_owned()),
        };
        let mut value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| UpstreamError::Config("provider key is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Self { name, value })
    }
}

/// A pooled client bound to one upstream.
pub struct Upstream {
    client: reqwest::Client,
    base_url: String,
    /// The URL of every path tollgate calls, parsed once: a request clones one
    /// instead of formatting and parsing (IDNA included) a string per call.
    urls: Vec<(&'static str, reqwest::Url)>,
    /// The header carrying the operator's provider key and its value.
    authorization: Option<ProviderAuth>,
    /// How a provider key is presented (for keys given per call).
    auth: UpstreamAuth,
    /// The configuration without its key, to build the same upstream elsewhere
    /// ([`Upstream::rebased`]).
    config: UpstreamConfig,
    /// Sent unless the call's headers already have them.
    default_headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    read_timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        // reqwest is built with `rustls-no-provider`: the process must pick a crypto
        // provider before the first client. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if !proxy_in_environment() {
            // Without a proxy to use, reqwest's per-request proxy matching only costs a
            // URL re-parse (IDNA included) on every call.
            builder = builder.no_proxy();
        }
        let client = builder
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| UpstreamError::Config(e.to_string()))?;
        let authorization = config.api_key.as_deref().map(|key| ProviderAuth::new(config.auth, key)).transpose()?;
        let mut default_headers = Vec::new();
        for (name, value) in &config.default_headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| UpstreamError::Config(format!("'{name}' is not a header name")))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| UpstreamError::Config(format!("the value of header '{name}' is not valid")))?;
            default_headers.push((name, value));
        }
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(UpstreamError::Config(format!(
                "upstream base URL must start with http:// or https:// (got '{base_url}')"
            )));
        }
        let mut urls = Vec::new();
        for path in KNOWN_PATHS {
            let url = reqwest::Url::parse(&format!("{base_url}{path}"))
                .map_err(|e| UpstreamError::Config(format!("upstream base URL '{base_url}' is not a URL: {e}")))?;
            urls.push((*path, url));
        }
        let keyless = UpstreamConfig { api_key: None, ..config.clone() };
        Ok(Self {
            client,
            base_url,
            urls,
            authorization,
            auth: config.auth,
            config: keyless,
            default_headers,
            read_timeout: config.read_timeout,
        })
    }

    /// The same upstream (timeouts, pool, auth style, default headers) at another
    /// base URL, with **no** provider key of its own: the operator's key never goes to
    /// a URL a tenant chose. Calls to it carry the key given per call
    /// ([`Upstream::send_with_key`]).
    pub fn rebased(&self, base_url: &str) -> Result<Upstream, UpstreamError> {
        Upstream::new(&UpstreamConfig { base_url: base_url.to_owned(), ..self.config.clone() })
    }

    /// `key` as this upstream presents a provider key.
    pub fn provider_auth(&self, key: &str) -> Result<ProviderAuth, UpstreamError> {
        ProviderAuth::new(self.auth, key)
    }

    /// Whether a provider key is configured (sent as `Authorization: Bearer`, or
    /// `x-api-key` for Anthropic).
    pub fn has_api_key(&self) -> bool {
        self.authorization.is_some()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends `method path` with the client headers chosen to pass through, a JSON
    /// body (or none), and returns as soon as the response head arrives; the body
    /// streams on. The provider key is set here and overrides anything passed.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: reqwest::header::HeaderMap,
        body: Option<Bytes>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.send_with_key(method, path, headers, body, None).await
    }

    /// [`send`](Self::send) with `key` (a project's own provider key) instead of the
    /// operator's; `None` sends the operator's, as `send` does.
    pub async fn send_with_key(
        &self,
        method: reqwest::Method,
        path: &str,
        mut headers: reqwest::header::HeaderMap,
        body: Option<Bytes>,
        key: Option<&ProviderAuth>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        for (name, value) in &self.default_headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let url = match self.urls.iter().find(|(known, _)| *known == path) {
            Some((_, url)) => url.clone(),
            None => reqwest::Url::parse(&format!("{}{}", self.base_url, path))
                .map_err(|e| UpstreamError::Config(format!("upstream URL for {path}: {e}")))?,
        };
        let mut request = self.client.request(method, url).headers(headers);
        if let Some(ProviderAuth { name, value }) = key.or(self.authorization.as_ref()) {
            request = request.header(name.clone(), value.clone());
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let response = tokio_timeout(self.read_timeout, request.send())
            .await
            .ok_or(UpstreamError::Timeout(self.read_timeout))?
            .map_err(|e| classify(&e, self.read_timeout))?;
        let header = |name: reqwest::header::HeaderName| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let retry_after = header(reqwest::header::RETRY_AFTER);
        // Anthropic names it `request-id`.
        let request_id = header(reqwest::header::HeaderName::from_static("x-request-id"))
            .or_else(|| header(reqwest::header::HeaderName::from_static("request-id")))
            .filter(|id| !id.is_empty() && id.len() <= 200 && id.bytes().all(|b| b.is_ascii_graphic()));
        let status = response.status().as_u16();
        let read_timeout = self.read_timeout;
        let body = response.bytes_stream().map(move |r| r.map_err(|e| classify(&e, read_timeout)));
        Ok(UpstreamResponse { status, content_type, retry_after, request_id, body: Box::pin(Coalesce::new(body)) })
    }
}

async fn tokio_timeout<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    // A local helper keeps tokio's `time` feature out of this crate's public API.
    tokio::time::timeout(d, f).await.ok()
}

fn classify(e: &reqwest::Error, read_timeout: Duration) -> UpstreamError {
    // Never include the URL's query or headers: only the error kind and message.
    let e_no_url = e.to_string();
    if e.is_timeout() {
        UpstreamError::Timeout(read_timeout)
    } else if e.is_connect() {
        UpstreamError::Connect(e_no_url)
    } else if e.is_body() || e.is_decode() {
        UpstreamError::Body(e_no_url)
    } else {
        UpstreamError::Connect(e_no_url)
    }
}

/// The most a coalesced chunk holds.
const COALESCE_MAX: usize = 64 * 1024;

/// Passes a body on with the chunks that are already there joined: a stream whose
/// events arrived in one read (20 SSE chunks in one TCP segment) goes to the client in
/// one write instead of twenty. It never waits for more: what is ready is joined, the
/// rest follows when it comes, so streaming latency is unchanged.
pub struct Coalesce<S> {
    inner: S,
    /// The end or the error found after data that was already joined: answered next.
    held: Option<Option<Result<Bytes, UpstreamError>>>,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, held: None }
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream<Item = Result<Bytes, UpstreamError>> + Unpin,
{
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(held) = self.held.take() {
            return Poll::Ready(held);
        }
        let first = match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => chunk,
            other => return other,
        };
        let mut joined: Option<bytes::BytesMut> = None;
        loop {
            let len = joined.as_ref().map_or(first.len(), |j| j.len());
            if len >= COALESCE_MAX {
                break;
            }
            match self.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(more))) => {
                    let j = joined.get_or_insert_with(|| {
                        let mut j = bytes::BytesMut::with_capacity(first.len() + more.len());
                        j.extend_from_slice(&first);
                        j
                    });
                    j.extend_from_slice(&more);
                }
                Poll::Ready(end) => {
                    self.held = Some(end);
                    break;
                }
                Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(joined.map_or(first, bytes::BytesMut::freeze))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::{Context, Poll};

    use super::*;

    /// A body that answers its script: a chunk, the end, an error, or "not yet".
    struct Scripted(VecDeque<Option<Result<&'static str, &'static str>>>);

    impl Stream for Scripted {
        type Item = Result<Bytes, UpstreamError>;

        fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(step)) => Poll::Ready(Some(
                    step.map(|s| Bytes::from_static(s.as_bytes())).map_err(|e| UpstreamError::Body(e.to_owned())),
                )),
            }
        }
    }

    #[test]
    fn a_rebased_upstream_carries_no_operator_key_and_provider_auth_prints_redacted() {
        let config = UpstreamConfig {
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: Some("sk-operator-secret".into()),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            auth: UpstreamAuth::XApiKey,
            default_headers: vec![("anthropic-version".into(), "2023-06-01".into())],
        };
        let upstream = Upstream::new(&config).expect("upstream");
        assert!(upstream.has_api_key());
        let rebased = upstream.rebased("http://127.0.0.1:2/v1/").expect("rebased");
        assert!(!rebased.has_api_key(), "the operator's key never goes to another base URL");
        assert_eq!(rebased.base_url(), "http://127.0.0.1:2/v1");
        let auth = rebased.provider_auth("sk-project-secret").expect("auth");
        let shown = format!("{auth:?}");
        assert!(!shown.contains("sk-project-secret") && shown.contains("x-api-key"), "{shown}");
        assert!(rebased.provider_auth("not\na header").is_err());
        assert!(rebased.rebased("ftp://127.0.0.1/v1").is_err());
    }

    #[tokio::test]
    async fn ready_chunks_are_joined_and_an_error_after_them_still_arrives() {
        let body = Scripted(VecDeque::from([Some(Ok("a")), Some(Ok("b")), Some(Ok("c")), Some(Err("cut"))]));
        let out: Vec<_> = Coalesce::new(body).collect().await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().ok(), Some(&Bytes::from_static(b"abc")));
        assert!(matches!(out[1], Err(UpstreamError::Body(_))));
    }

    #[tokio::test]
    async fn chunks_not_yet_there_are_not_waited_for() {
        let script = [Some(Ok("one")), None, Some(Ok("two")), Some(Ok("three")), None, Some(Ok("four"))];
        let out: Vec<Bytes> =
            Coalesce::new(Scripted(VecDeque::from(script))).map(|r| r.expect("chunk")).collect().await;
        assert_eq!(out, [Bytes::from_static(b"one"), Bytes::from_static(b"twothree"), Bytes::from_static(b"four")]);
    }
}
