//! The translation, end to end on realistic bodies and one mapping at a time.

use serde_json::{Value, json};

use super::*;
use crate::sse::SseRewriter;

fn translate(request: &Value) -> Result<Value, RequestError> {
    let body = serde_json::to_vec(request).expect("json");
    let out = chat_to_messages(&body, "claude-sonnet-4-5-20250929", 4096)?;
    Ok(serde_json::from_slice(&out).expect("the translation is JSON"))
}

fn refused(request: &Value) -> RequestError {
    translate(request).expect_err(&request.to_string())
}

fn user(text: &str) -> Value {
    json!({ "role": "user", "content": text })
}

#[test]
fn a_realistic_conversation_with_tools_translates_whole() {
    let request = json!({
        "model": "claude-alias",
        "messages": [
            { "role": "system", "content": "You are a weather bot." },
            { "role": "user", "content": "Weather in Paris and Rome?" },
            { "role": "assistant", "content": "Let me look.", "tool_calls": [
                { "id": "call_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
                { "id": "call_2", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Rome\"}" } }
            ] },
            { "role": "tool", "tool_call_id": "call_1", "content": "18C, sunny" },
            { "role": "tool", "tool_call_id": "call_2", "content": [{ "type": "text", "text": "21C" }] },
            { "role": "developer", "content": [{ "type": "text", "text": "Answer in one line." }] },
            { "role": "assistant", "content": "Paris 18C, Rome 21C." },
            { "role": "user", "content": [{ "type": "text", "text": "Thanks" }] }
        ],
        "tools": [{ "type": "function", "function": {
            "name": "weather", "description": "Current weather",
            "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }
        } }],
        "tool_choice": "auto",
        "max_completion_tokens": 300,
        "temperature": 0.2,
        "stream": true,
        "stream_options": { "include_usage": true },
        "user": "user-42",
        "seed": 7
    });
    let expected = json!({
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 300,
        "system": "You are a weather bot.\n\nAnswer in one line.",
        "messages": [
            { "role": "user", "content": [{ "type": "text", "text": "Weather in Paris and Rome?" }] },
            { "role": "assistant", "content": [
                { "type": "text", "text": "Let me look." },
                { "type": "tool_use", "id": "call_1", "name": "weather", "input": { "city": "Paris" } },
                { "type": "tool_use", "id": "call_2", "name": "weather", "input": { "city": "Rome" } }
            ] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny" },
                { "type": "tool_result", "tool_use_id": "call_2", "content": [{ "type": "text", "text": "21C" }] }
            ] },
            { "role": "assistant", "content": [{ "type": "text", "text": "Paris 18C, Rome 21C." }] },
            { "role": "user", "content": [{ "type": "text", "text": "Thanks" }] }
        ],
        "tools": [{ "name": "weather", "description": "Current weather",
            "input_schema": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } }],
        "tool_choice": { "type": "auto" },
        "temperature": 0.2,
        "stream": true,
        "metadata": { "user_id": "user-42" }
    });
    assert_eq!(translate(&request).expect("valid"), expected);
}

#[test]
fn consecutive_messages_of_one_role_merge_and_tool_results_come_first() {
    let request = json!({ "messages": [
        user("one"),
        user("two"),
        { "role": "assistant", "content": null, "tool_calls": [
            { "id": "t1", "type": "function", "function": { "name": "f", "arguments": "" } }
        ] },
        { "role": "tool", "tool_call_id": "t1", "content": "done" },
        user("and now?"),
        { "role": "assistant", "content": "" },
        { "role": "assistant", "content": [{ "type": "text", "text": "a" }, { "type": "refusal", "refusal": "b" }] }
    ] });
    let out = translate(&request).expect("valid");
    assert_eq!(
        out["messages"],
        json!([
            { "role": "user", "content": [{ "type": "text", "text": "one" }, { "type": "text", "text": "two" }] },
            { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "f", "input": {} }] },
            { "role": "user", "content": [
                { "type": "tool_result", "tool_use_id": "t1", "content": "done" },
                { "type": "text", "text": "and now?" }
            ] },
            { "role": "assistant", "content": [{ "type": "text", "text": "a" }, { "type": "text", "text": "b" }] }
        ])
    );
    assert_eq!(out["max_tokens"], 4096, "the default applies");
    assert!(out.get("system").is_none() && out.get("tools").is_none());
    // A user turn that starts with text and then answers tools still puts the results first.
    let request = json!({ "messages": [
        user("look"),
        { "role": "tool", "tool_call_id": "t9", "content": "" }
    ] });
    assert_eq!(
        translate(&request).expect("valid")["messages"],
        json!([{ "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "t9" }, { "type": "text", "text": "look" }
        ] }])
    );
}

#[test]
fn images_become_base64_or_url_sources() {
    let request = json!({ "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "What is this?" },
        { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high" } },
        { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } }
    ] }] });
    assert_eq!(
        translate(&request).expect("valid")["messages"][0]["content"],
        json!([
            { "type": "text", "text": "What is this?" },
            { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
            { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } }
        ])
    );
}

#[test]
fn tools_tool_choice_and_parallel_tool_calls_map() {
    let with = |extra: Value| {
        let mut request = json!({
            "messages": [user("hi")],
            "tools": [{ "type": "function", "function": { "name": "lookup" } }],
        });
        if let (Some(request), Value::Object(extra)) = (request.as_object_mut(), extra) {
            request.extend(extra);
        }
        translate(&request).expect("valid")
    };
    let out = with(json!({}));
    assert_eq!(out["tools"], json!([{ "name": "lookup", "input_schema": { "type": "object", "properties": {} } }]));
    assert!(out.get("tool_choice").is_none());
    for (choice, expected) in [
        (json!("auto"), json!({ "type": "auto" })),
        (json!("required"), json!({ "type": "any" })),
        (json!("none"), json!({ "type": "none" })),
        (json!({ "type": "function", "function": { "name": "lookup" } }), json!({ "type": "tool", "name": "lookup" })),
    ] {
        assert_eq!(with(json!({ "tool_choice": choice }))["tool_choice"], expected, "{choice}");
    }
    assert_eq!(
        with(json!({ "parallel_tool_calls": false }))["tool_choice"],
        json!({ "type": "auto", "disable_parallel_tool_use": true })
    );
    assert_eq!(
        with(json!({ "parallel_tool_calls": false, "tool_choice": "required" }))["tool_choice"],
        json!({ "type": "any", "disable_parallel_tool_use": true })
    );
    assert!(with(json!({ "parallel_tool_calls": true })).get("tool_choice").is_none());
    // Without tools there is no tool choice to make.
    let out = translate(&json!({ "messages": [user("hi")], "tool_choice": "auto", "tools": [] })).expect("valid");
    assert!(out.get("tools").is_none() && out.get("tool_choice").is_none());
}

#[test]
fn limits_sampling_stop_stream_and_user_map() {
    let out = translate(&json!({ "messages": [user("hi")], "max_tokens": 50, "temperature": 1.7, "top_p": 0.9,
        "stop": "END", "stream": false, "user": "u1" }))
    .expect("valid");
    assert_eq!(out["max_tokens"], 50);
    assert_eq!(out["temperature"], 1.0, "clamped to Anthropic's range");
    assert_eq!(out["top_p"], 0.9);
    assert_eq!(out["stop_sequences"], json!(["END"]));
    assert!(out.get("stream").is_none());
    assert_eq!(out["metadata"], json!({ "user_id": "u1" }));
    let out = translate(&json!({ "messages": [user("hi")], "max_tokens": 50, "max_completion_tokens": 70,
        "stop": ["a", "", "b"], "n": 1 }))
    .expect("valid");
    assert_eq!((out["max_tokens"].clone(), out["stop_sequences"].clone()), (json!(70), json!(["a", "b"])));
    assert!(out.get("temperature").is_none() && out.get("top_p").is_none());
}

#[test]
fn fields_without_an_equivalent_are_dropped() {
    let out = translate(&json!({
        "model": "x", "messages": [{ "role": "user", "content": "hi", "name": "alice" }],
        "presence_penalty": 0.5, "frequency_penalty": 0.5, "logprobs": true, "top_logprobs": 2, "seed": 1,
        "logit_bias": { "50256": -100 }, "response_format": { "type": "json_schema", "json_schema": { "name": "x" } },
        "stream_options": { "include_usage": true }, "store": true, "metadata": { "a": "b" },
        "reasoning_effort": "low", "service_tier": "auto", "something_new": 1
    }))
    .expect("valid");
    let mut keys: Vec<&str> = out.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["max_tokens", "messages", "model"]);
    assert_eq!(out["messages"], json!([{ "role": "user", "content": [{ "type": "text", "text": "hi" }] }]));
}

#[test]
fn bad_requests_are_errors_naming_the_field() {
    let call = |arguments: Value| {
        json!({ "messages": [user("x"), { "role": "assistant", "tool_calls": [
            { "id": "a", "type": "function", "function": { "name": "f", "arguments": "{}" } },
            { "id": "b", "type": "function", "function": { "name": "f", "arguments": arguments } }
        ] }] })
    };
    let cases: Vec<(Value, Option<&str>)> = vec![
        (json!({ "messages": [user("x")], "n": 2 }), Some("n")),
        (json!({ "messages": [user("x")], "n": 0 }), Some("n")),
        (call(json!("{not json")), Some("messages[1].tool_calls[1].function.arguments")),
        (call(json!("[1, 2]")), Some("messages[1].tool_calls[1].function.arguments")),
        (call(json!(5)), Some("messages[1].tool_calls[1].function.arguments")),
        (json!({ "model": "m" }), Some("messages")),
        (json!({ "messages": [] }), Some("messages")),
        (json!({ "messages": "hi" }), Some("messages")),
        (json!({ "messages": [{ "role": "system", "content": "only a system prompt" }] }), Some("messages")),
        (json!({ "messages": [5] }), Some("messages[0]")),
        (json!({ "messages": [{ "content": "no role" }] }), Some("messages[0].role")),
        (json!({ "messages": [{ "role": 1, "content": "x" }] }), Some("messages[0].role")),
        (json!({ "messages": [user("x"), { "role": "wizard", "content": "x" }] }), Some("messages[1].role")),
        (
            json!({ "messages": [user("x"), { "role": "function", "name": "f", "content": "x" }] }),
            Some("messages[1].role"),
        ),
        (json!({ "messages": [{ "role": "user", "content": 7 }] }), Some("messages[0].content")),
        (json!({ "messages": [{ "role": "user", "content": ["x"] }] }), Some("messages[0].content[0]")),
        (
            json!({ "messages": [{ "role": "user", "content": [{ "type": "input_audio", "input_audio": {} }] }] }),
            Some("messages[0].content[0].type"),
        ),
        (
            json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "ftp://x" } }] }] }),
            Some("messages[0].content[0].image_url.url"),
        ),
        (
            json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "data:image/png,abc" } }] }] }),
            Some("messages[0].content[0].image_url.url"),
        ),
        (
            json!({ "messages": [{ "role": "system", "content": [{ "type": "image_url" }] }] }),
            Some("messages[0].content[0]"),
        ),
        (json!({ "messages": [user("x"), { "role": "tool", "content": "r" }] }), Some("messages[1].tool_call_id")),
        (
            json!({ "messages": [user("x"), { "role": "assistant", "tool_calls": [{ "type": "function", "function": { "name": "f" } }] }] }),
            Some("messages[1].tool_calls[0].id"),
        ),
        (json!({ "messages": [user("x")], "tools": [{ "type": "web_search" }] }), Some("tools[0].type")),
        (json!({ "messages": [user("x")], "tools": [{ "type": "function" }] }), Some("tools[0].function")),
        (json!({ "messages": [user("x")], "tools": {} }), Some("tools")),
        (json!({ "messages": [user("x")], "tool_choice": "sometimes" }), Some("tool_choice")),
        (json!({ "messages": [user("x")], "parallel_tool_calls": "no" }), Some("parallel_tool_calls")),
        (json!({ "messages": [user("x")], "max_tokens": 0 }), Some("max_tokens")),
        (json!({ "messages": [user("x")], "max_completion_tokens": "many" }), Some("max_completion_tokens")),
        (json!({ "messages": [user("x")], "temperature": -1 }), Some("temperature")),
        (json!({ "messages": [user("x")], "top_p": "high" }), Some("top_p")),
        (json!({ "messages": [user("x")], "stop": [1] }), Some("stop")),
        (json!({ "messages": [user("x")], "stream": "yes" }), Some("stream")),
        (json!({ "messages": [user("x")], "user": 5 }), Some("user")),
        (json!({ "messages": [user("x")], "functions": [{ "name": "f" }] }), Some("functions")),
    ];
    for (request, param) in cases {
        let e = refused(&request);
        assert_eq!(e.param.as_deref(), param, "{request}: {}", e.message);
        assert!(!e.message.is_empty());
    }
    for body in [
        &b"not json"[..],
        b"[]",
        b"",
        b"{\"messages\": [",
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
    ] {
        let e = chat_to_messages(body, "claude", 10).expect_err(&String::from_utf8_lossy(body));
        assert_eq!(e.param, None, "{}", e.message);
    }
}

#[test]
fn any_cut_of_a_request_is_an_error_or_a_translation_never_a_panic() {
    let body = serde_json::to_vec(&json!({ "messages": [
        { "role": "system", "content": "s" }, user("é ü 漢字"),
        { "role": "assistant", "tool_calls": [{ "id": "a", "type": "function", "function": { "name": "f", "arguments": "{\"k\":[1,{}]}" } }] },
        { "role": "tool", "tool_call_id": "a", "content": "r" }
    ], "tools": [{ "type": "function", "function": { "name": "f", "parameters": { "type": "object" } } }] }))
    .expect("json");
    for cut in 0..body.len() {
        let _ = chat_to_messages(&body[..cut], "claude", 10);
    }
    assert!(chat_to_messages(&body, "claude", 10).is_ok());
}

// ---- plain answers ----

fn chat(answer: &Value) -> Value {
    let body = serde_json::to_vec(answer).expect("json");
    serde_json::from_slice(&messages_to_chat(&body, "claude-alias", 1_700_000_000).expect("translated")).expect("json")
}

#[test]
fn a_text_answer_becomes_a_chat_completion_with_its_usage() {
    let answer = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [{ "type": "thinking", "thinking": "hm", "signature": "s" }, { "type": "text", "text": "Hello" },
            { "type": "text", "text": " there" }],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": { "input_tokens": 100, "output_tokens": 7, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 20 }
    });
    assert_eq!(
        chat(&answer),
        json!({
            "id": "chatcmpl-msg_01", "object": "chat.completion", "created": 1_700_000_000, "model": "claude-alias",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hello there", "refusal": null },
                "logprobs": null, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 170, "completion_tokens": 7, "total_tokens": 177,
                "prompt_tokens_details": { "cached_tokens": 50 } }
        })
    );
    // The gateway's OpenAI usage reader sees the same figures.
    let body = messages_to_chat(&serde_json::to_vec(&answer).expect("json"), "m", 0).expect("translated");
    assert_eq!(
        crate::usage::usage_from_json(&body),
        Some(TokenUsage { prompt_tokens: 170, completion_tokens: 7, total_tokens: 177, cached_tokens: 50 })
    );
}

#[test]
fn tool_use_blocks_become_tool_calls() {
    let answer = json!({
        "id": "msg_02", "type": "message", "role": "assistant",
        "content": [
            { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" } },
            { "type": "tool_use", "id": "toolu_2", "name": "time", "input": {} }
        ],
        "stop_reason": "tool_use", "usage": { "input_tokens": 10, "output_tokens": 20 }
    });
    let out = chat(&answer);
    let message = &out["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null, "no text, tool calls: null content");
    assert_eq!(
        message["tool_calls"],
        json!([
            { "id": "toolu_1", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
            { "id": "toolu_2", "type": "function", "function": { "name": "time", "arguments": "{}" } }
        ])
    );
    assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let with_text = json!({ "id": "m", "type": "message", "content": [{ "type": "text", "text": "Sure." },
        { "type": "tool_use", "id": "t", "name": "f", "input": { "a": 1 } }], "stop_reason": "tool_use" });
    let out = chat(&with_text);
    assert_eq!(out["choices"][0]["message"]["content"], "Sure.");
    assert!(out.get("usage").is_none(), "no usage upstream, none invented");
    let empty = chat(&json!({ "id": "m", "type": "message", "content": [], "stop_reason": "max_tokens" }));
    assert_eq!(empty["choices"][0]["message"]["content"], "");
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        (json!("end_turn"), json!("stop")),
        (json!("stop_sequence"), json!("stop")),
        (json!("max_tokens"), json!("length")),
        (json!("tool_use"), json!("tool_calls")),
        (json!("refusal"), json!("content_filter")),
        (json!("pause_turn"), json!("stop")),
        (json!(null), json!(null)),
    ] {
        let answer = json!({ "id": "m", "type": "message", "content": [], "stop_reason": stop });
        assert_eq!(chat(&answer)["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(finish_reason(stop.as_str().unwrap_or("end_turn")), finish.as_str().unwrap_or("stop"));
    }
}

#[test]
fn answers_that_are_not_messages_are_translate_errors() {
    assert!(matches!(messages_to_chat(b"{\"id\":", "m", 0), Err(TranslateError::NotJson(_))));
    assert!(matches!(messages_to_chat(b"[]", "m", 0), Err(TranslateError::Shape(_))));
    for shape in [
        json!({ "type": "error", "error": { "type": "api_error", "message": "x" } }),
        json!({ "type": "message", "content": "text" }),
        json!({ "type": "message", "content": [{ "type": "text" }] }),
        json!({ "type": "message", "content": [{ "type": "tool_use", "input": {} }] }),
    ] {
        let body = serde_json::to_vec(&shape).expect("json");
        assert!(matches!(messages_to_chat(&body, "m", 0), Err(TranslateError::Shape(_))), "{shape}");
    }
    // An odd usage block loses only the usage.
    let odd = br#"{"id":"m","type":"message","content":[{"type":"text","text":"hi"}],"usage":"lots"}"#;
    let out: Value = serde_json::from_slice(&messages_to_chat(odd, "m", 0).expect("translated")).expect("json");
    assert_eq!((out["choices"][0]["message"]["content"].clone(), out.get("usage")), (json!("hi"), None));
}

#[test]
fn anthropic_errors_become_openai_errors() {
    let error = |body: &[u8]| -> Value { serde_json::from_slice(&messages_error_to_chat(body)).expect("json") };
    assert_eq!(
        error(br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#),
        json!({ "error": { "message": "Number of requests has exceeded your rate limit", "type": "rate_limit_error",
            "param": null, "code": null } })
    );
    assert_eq!(
        error(br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)["error"]["type"],
        "server_error"
    );
    assert_eq!(
        error(br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#)["error"]
            ["type"],
        "invalid_request_error"
    );
    for unknown in [&b"<html>502 Bad Gateway</html>"[..], b"", br#"{"error":{}}"#, br#"{"error":"x"}"#] {
        let out = error(unknown);
        assert_eq!(out["error"]["message"], "The upstream provider returned an error.", "{out}");
        assert_eq!((out["error"]["param"].clone(), out["error"]["code"].clone()), (Value::Null, Value::Null));
    }
}

// ---- streams ----

fn sse(events: &[Value]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("x"))).collect()
}

fn start(input: u64, cache_read: u64) -> Value {
    json!({ "type": "message_start", "message": { "id": "msg_s1", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5", "content": [], "stop_reason": null,
        "usage": { "input_tokens": input, "output_tokens": 1, "cache_read_input_tokens": cache_read,
            "cache_creation_input_tokens": 0 } } })
}

fn text_stream() -> String {
    sse(&[
        start(25, 5),
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        json!({ "type": "ping" }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Héllo" } }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": " 漢字 wörld" } }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null },
            "usage": { "output_tokens": 15 } }),
        json!({ "type": "message_stop" }),
    ])
}

fn tool_stream() -> String {
    let delta = |index: u64, partial: &str| json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": partial } });
    sse(&[
        start(40, 0),
        json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Checking." } }),
        json!({ "type": "content_block_stop", "index": 0 }),
        json!({ "type": "content_block_start", "index": 1,
            "content_block": { "type": "tool_use", "id": "toolu_a", "name": "weather", "input": {} } }),
        delta(1, ""),
        delta(1, "{\"city\":"),
        delta(1, " \"Paris\"}"),
        json!({ "type": "content_block_stop", "index": 1 }),
        json!({ "type": "content_block_start", "index": 2,
            "content_block": { "type": "tool_use", "id": "toolu_b", "name": "time", "input": {} } }),
        delta(2, "{}"),
        json!({ "type": "content_block_stop", "index": 2 }),
        json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use" }, "usage": { "output_tokens": 30 } }),
        json!({ "type": "message_stop" }),
    ])
}

/// The payloads of an OpenAI stream: JSON chunks, and `[DONE]` as a string.
fn chunks(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).expect("utf-8");
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    text.split_terminator("\n\n")
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("data events only");
            if data == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(data).expect("json chunk") }
        })
        .collect()
}

fn whole(stream: &str, include_usage: bool) -> Vec<u8> {
    let mut translator = MessagesToChatStream::new("claude-alias", 1_700_000_000, include_usage);
    let mut out = translator.push(stream.as_bytes()).to_vec();
    out.extend_from_slice(&translator.finish());
    out
}

fn deltas(chunks: &[Value]) -> Vec<Value> {
    chunks.iter().map(|c| if c.is_string() { c.clone() } else { c["choices"][0]["delta"].clone() }).collect()
}

#[test]
fn a_text_stream_translates_event_by_event() {
    let out = chunks(&whole(&text_stream(), false));
    for chunk in out.iter().filter(|c| c.is_object()) {
        assert_eq!(
            (&chunk["id"], &chunk["object"], &chunk["created"], &chunk["model"]),
            (&json!("chatcmpl-msg_s1"), &json!("chat.completion.chunk"), &json!(1_700_000_000), &json!("claude-alias"))
        );
    }
    assert_eq!(
        deltas(&out),
        [
            json!({ "role": "assistant", "content": "" }),
            json!({ "content": "Héllo" }),
            json!({ "content": " 漢字 wörld" }),
            json!({}),
            json!("[DONE]"),
        ]
    );
    assert_eq!(out[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(out[1]["choices"][0]["finish_reason"], Value::Null);
}

#[test]
fn the_usage_chunk_comes_when_asked_with_cache_tokens() {
    let out = chunks(&whole(&text_stream(), true));
    assert_eq!(out.len(), 6);
    assert_eq!(out[4]["choices"], json!([]));
    assert_eq!(
        out[4]["usage"],
        json!({ "prompt_tokens": 30, "completion_tokens": 15, "total_tokens": 45,
            "prompt_tokens_details": { "cached_tokens": 5 } })
    );
    assert_eq!(out[5], "[DONE]");
    // And the gateway's OpenAI stream reader accounts the translated stream the same.
    let mut rewriter = SseRewriter::new(false);
    let _ = rewriter.process(bytes::Bytes::from(whole(&text_stream(), true)));
    let summary = rewriter.finish();
    assert_eq!(
        summary.usage,
        Some(TokenUsage { prompt_tokens: 30, completion_tokens: 15, total_tokens: 45, cached_tokens: 5 })
    );
    assert_eq!(summary.completion_text, "Héllo 漢字 wörld");
    assert!(summary.saw_done);
}

#[test]
fn a_stream_with_two_tool_calls_indexes_them_from_zero() {
    let out = chunks(&whole(&tool_stream(), true));
    assert_eq!(
        deltas(&out[..out.len() - 2]),
        [
            json!({ "role": "assistant", "content": "" }),
            json!({ "content": "Checking." }),
            json!({ "tool_calls": [{ "index": 0, "id": "toolu_a", "type": "function",
                "function": { "name": "weather", "arguments": "" } }] }),
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\":" } }] }),
            json!({ "tool_calls": [{ "index": 0, "function": { "arguments": " \"Paris\"}" } }] }),
            json!({ "tool_calls": [{ "index": 1, "id": "toolu_b", "type": "function",
                "function": { "name": "time", "arguments": "" } }] }),
            json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "{}" } }] }),
            json!({}),
        ]
    );
    assert_eq!(out[out.len() - 3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(out[out.len() - 2]["usage"]["completion_tokens"], 30);
    assert_eq!(out[out.len() - 1], "[DONE]");
}

#[test]
fn a_stream_fed_one_byte_at_a_time_gives_what_it_gives_whole() {
    for (stream, include_usage) in
        [(text_stream(), true), (tool_stream(), false), (text_stream().replace('\n', "\r\n"), true)]
    {
        let expected = whole(&stream, include_usage);
        assert!(!expected.is_empty());
        for cut in [1, 2, 3, 7, 64] {
            let mut translator = MessagesToChatStream::new("claude-alias", 1_700_000_000, include_usage);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(cut) {
                out.extend_from_slice(&translator.push(piece));
            }
            out.extend_from_slice(&translator.finish());
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected), "cut {cut}");
        }
    }
    // Bare `\r` line ends, even when a `\r` ends one push and the next starts with `\n`.
    let cr = text_stream().replace('\n', "\r");
    assert_eq!(whole(&cr, true), whole(&text_stream(), true));
}

#[test]
fn an_error_event_ends_the_stream_with_an_error_chunk() {
    let mut stream = sse(&[
        start(10, 0),
        json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Hi" } }),
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
    ]);
    stream.push_str(&sse(&[json!({ "type": "message_stop" })]));
    let out = chunks(&whole(&stream, true));
    assert_eq!(out.len(), 3, "nothing after the error");
    assert_eq!(
        out[2],
        json!({ "error": { "message": "Overloaded", "type": "server_error", "param": null, "code": null } })
    );
}

#[test]
fn a_stream_cut_short_gets_no_done() {
    let stream = text_stream();
    let cut = stream.find("event: message_delta").expect("delta");
    let out = chunks(&whole(&stream[..cut], true));
    assert!(!out.iter().any(|c| c == "[DONE]"));
    assert_eq!(out.len(), 3);
    // Cut in the middle of an event: the half event is not translated.
    let half = stream.find("Héllo").expect("text");
    let out = chunks(&whole(&stream[..half], true));
    assert_eq!(out.len(), 1);
    // A last event the upstream did not close with its blank line is still read.
    let unclosed = stream.trim_end_matches('\n');
    assert_eq!(chunks(&whole(unclosed, false)).last(), Some(&json!("[DONE]")));
}

#[test]
fn an_endless_line_or_a_broken_event_is_an_error_and_the_end() {
    let mut translator = MessagesToChatStream::new("m", 0, false);
    let mut out = translator.push(sse(&[start(1, 0)]).as_bytes()).to_vec();
    out.extend_from_slice(&translator.push(b"data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\""));
    let filler = vec![b'a'; 64 * 1024];
    for _ in 0..(MAX_PENDING_EVENT / filler.len() + 2) {
        out.extend_from_slice(&translator.push(&filler));
    }
    out.extend_from_slice(&translator.push(b"\"}}\n\n"));
    out.extend_from_slice(&translator.push(sse(&[json!({ "type": "message_stop" })]).as_bytes()));
    out.extend_from_slice(&translator.finish());
    let out = chunks(&out);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[1]["error"]["code"], "upstream_stream_broken");
    assert_eq!(translator.pending_len(), 0, "the buffer was let go");

    let broken = "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"delta\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let out = chunks(&whole(broken, false));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["error"]["type"], "upstream_error");
}

mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::{tool_stream, whole};
    use crate::translate::{MessagesToChatStream, chat_to_messages};

    fn config(cases: u32) -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// Pieces Anthropic streams are made of, so that generated input reaches the
    /// translation instead of failing on the first byte.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let fixed: Vec<&'static [u8]> = vec![
            b"event: message_start\n",
            b"data: ",
            b"data:",
            b"\n",
            b"\r\n",
            b"\r",
            b"\n\n",
            b": comment\n",
            br#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3}}}"#,
            br#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f"}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\""}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\u00e9"}}"#,
            br#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":2}}"#,
            br#"{"type":"message_stop"}"#,
            br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#,
            br#"{"type":"ping"}"#,
            "é漢".as_bytes(),
            b"{",
            b"\"",
        ];
        prop_oneof![
            4 => proptest::sample::select(fixed).prop_map(<[u8]>::to_vec),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    /// Checks that `out` is a well-formed OpenAI stream: `data:` events of JSON or
    /// `[DONE]`, nothing after `[DONE]` or an error.
    fn check_well_formed(out: &[u8]) -> Result<(), TestCaseError> {
        let text = std::str::from_utf8(out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(text.is_empty() || text.ends_with("\n\n"));
        let events: Vec<&str> = text.split_terminator("\n\n").collect();
        for (i, event) in events.iter().enumerate() {
            let data = event.strip_prefix("data: ").ok_or_else(|| TestCaseError::fail(format!("{event:?}")))?;
            let last = i + 1 == events.len();
            if data == "[DONE]" {
                prop_assert!(last, "[DONE] is last");
                continue;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if chunk.get("error").is_some() {
                prop_assert!(last, "an error is last");
            } else {
                prop_assert_eq!(&chunk["object"], "chat.completion.chunk");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_split_of_a_stream_gives_the_same_chunks(mut cuts in proptest::collection::vec(0usize..4096, 0..24)) {
            let stream = tool_stream();
            let expected = whole(&stream, true);
            cuts.iter_mut().for_each(|c| *c %= stream.len() + 1);
            cuts.sort_unstable();
            let mut translator = MessagesToChatStream::new("claude-alias", 1_700_000_000, true);
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                out.extend_from_slice(&translator.push(&stream.as_bytes()[from..cut]));
                from = cut;
            }
            out.extend_from_slice(&translator.finish());
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn any_bytes_give_a_well_formed_stream(pieces in proptest::collection::vec(piece(), 0..48), cut in 1usize..64) {
            let input = pieces.concat();
            let mut translator = MessagesToChatStream::new("m", 0, true);
            let mut out = Vec::new();
            for part in input.chunks(cut) {
                out.extend_from_slice(&translator.push(part));
            }
            out.extend_from_slice(&translator.finish());
            check_well_formed(&out)?;
        }

        #[test]
        fn any_request_bytes_are_a_translation_or_a_request_error(pieces in proptest::collection::vec(piece(), 0..24)) {
            let mut body = br#"{"messages":[{"role":"user","content":"#.to_vec();
            body.extend_from_slice(&pieces.concat());
            body.extend_from_slice(b"}]}");
            if let Ok(out) = chat_to_messages(&body, "claude", 16) {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
        }
    }
}
