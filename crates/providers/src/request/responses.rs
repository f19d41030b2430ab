//! OpenAI's `POST /v1/responses` as the gateway sees it: `model`, `stream`,
//! `max_output_tokens` and where the prompt lies (`instructions`, `input`, `tools`),
//! read once by a borrowing struct; the rest is forwarded untouched. Its streams
//! always end with `response.completed` carrying the usage, so nothing is rewritten.

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
    max_output_tokens: Option<Value>,
    #[serde(default, borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
}

pub(super) fn parse<'a>(body: &'a [u8], text: &'a str) -> Result<RequestView<'a>, RequestError> {
    let probe: Probe<'a> = serde_json::from_str(text).map_err(json_error)?;
    let model = checked_model(probe.model)?;
    let stream = checked_stream(Endpoint::Responses, &probe.stream)?;
    let max_output_tokens = output("max_output_tokens", &probe.max_output_tokens)?;
    let input = probe.input.filter(|i| i.get() != "null");
    if let Some(input) = input {
        shape::check_text_or_objects("input", input)?;
    }
    let instructions = probe.instructions.filter(|i| i.get() != "null");
    if let Some(instructions) = instructions
        && serde_json::from_str::<Cow<'_, str>>(instructions.get()).is_err()
    {
        return Err(RequestError::field("instructions", "must be a string"));
    }
    shape::check_definitions("tools", probe.tools)?;
    Ok(RequestView {
        endpoint: Endpoint::Responses,
        model,
        stream,
        client_wants_usage: false,
        max_output_tokens,
        n: 1,
        best_of: 1,
        prompt: Some(Prompt::Values([instructions, input, probe.tools])),
        prompts: 1,
        stream_options: None,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_request_is_read_and_bad_ones_refused() {
        let body = br#"{"model":"gpt-4o-mini","input":"Say hi","instructions":"be brief","max_output_tokens":32,"stream":true}"#;
        let view = RequestView::parse(Endpoint::Responses, body).expect("valid");
        assert_eq!((view.model.as_ref(), view.stream, view.max_output_tokens), ("gpt-4o-mini", true, Some(32)));
        assert!(!view.strips_usage());
        assert_eq!(view.upstream_body(&bytes::Bytes::from_static(body)).as_ref(), &body[..]);
        let items = br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x"}]}]}"#;
        assert!(RequestView::parse(Endpoint::Responses, items).is_ok());
        for bad in [
            &br#"{"input":"x"}"#[..],
            br#"{"model":"m","input":5}"#,
            br#"{"model":"m","input":[1]}"#,
            br#"{"model":"m","input":"x","instructions":[1]}"#,
            br#"{"model":"m","input":"x","max_output_tokens":-3}"#,
        ] {
            assert!(RequestView::parse(Endpoint::Responses, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
