//! Anthropic's `POST /v1/messages` as the gateway sees it: `model`, `stream`,
//! `max_tokens` and where the prompt lies (`system`, `messages`, `tools`), read once
//! by a borrowing struct; everything else is skipped unparsed and forwarded as it is.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tollgate_tokenize::Prompt;

use super::{Endpoint, RequestError, RequestView, checked_model, checked_stream, json_error, output, shape};

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
}

pub(super) fn parse<'a>(body: &'a [u8], text: &'a str) -> Result<RequestView<'a>, RequestError> {
    let probe: Probe<'a> = serde_json::from_str(text).map_err(json_error)?;
    let model = checked_model(probe.model)?;
    let stream = checked_stream(Endpoint::Messages, &probe.stream)?;
    // Anthropic requires `max_tokens`; without it the upstream answers 400, and the
    // gateway's default output reservation applies meanwhile.
    let max_output_tokens = output("max_tokens", &probe.max_tokens)?;
    let messages = probe.messages.ok_or_else(|| RequestError::field("messages", "is required"))?;
    // The same shape as OpenAI's: objects with a string `role` and a `content` that is
    // a string or an array of content blocks.
    shape::check_messages(messages)?;
    shape::check_definitions("tools", probe.tools)?;
    let system = probe.system.filter(|s| s.get() != "null");
    if let Some(system) = system {
        shape::check_text_or_objects("system", system)?;
    }
    Ok(RequestView {
        endpoint: Endpoint::Messages,
        model,
        stream,
        client_wants_usage: false,
        max_output_tokens,
        n: 1,
        best_of: 1,
        prompt: Some(Prompt::Values([system, Some(messages), probe.tools])),
        prompts: 1,
        stream_options: None,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_is_read_and_bad_ones_refused() {
        let body = br#"{"model":"claude-sonnet-4-5","max_tokens":64,"system":"be brief","stream":true,
            "messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let view = RequestView::parse(Endpoint::Messages, body).expect("valid");
        assert_eq!((view.model.as_ref(), view.stream, view.max_output_tokens), ("claude-sonnet-4-5", true, Some(64)));
        assert!(!view.strips_usage(), "an Anthropic stream always reports its usage");
        assert_eq!(view.upstream_body(&bytes::Bytes::from_static(body)).as_ref(), &body[..]);
        assert!(tollgate_tokenize::prompt_upper_bound(view.prompt.expect("prompt")) >= 10);
        for bad in [
            &br#"{"model":"claude","max_tokens":1}"#[..],
            br#"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"claude","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
            br#"{"model":"claude","messages":[{"role":"user","content":"x"}],"system":5}"#,
            br#"{"model":"claude","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            br#"{"model":"claude","messages":"hello"}"#,
            br#"{"model":"claude","max_tokens":1,"messages":[["user","x"]]}"#,
        ] {
            assert!(RequestView::parse(Endpoint::Messages, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
