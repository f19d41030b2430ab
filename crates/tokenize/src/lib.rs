//! Token counting with OpenAI's own BPE encodings (tiktoken-rs), for reservations
//! before a request goes upstream and for accounting when the upstream reports no
//! usage (a stream that broke, a provider that never sends usage).
//!
//! Encodings: `o200k_base` for gpt-4o, gpt-4.1, gpt-4.5, gpt-5 and the o-series;
//! `cl100k_base` for gpt-4, gpt-3.5 and the embedding models. Every other model
//! (Claude, Gemini, Mistral, Llama, …) is counted with `cl100k_base` as a documented
//! approximation: their tokenizers are not public or not bundled, and cl100k is
//! within a few percent of them on English text. Those counts are estimates; a
//! reported usage always wins over them.
//!
//! Loading an encoding parses ~100k–200k BPE ranks (85–190 ms), so each is loaded
//! lazily, once per process, into a `OnceLock`, and shared by every request and thread.
//! [`preload`] lets startup pay that cost instead of the first request.
//!
//! What the chat counter does not see: images, audio and files in content parts
//! (their token cost depends on pixel sizes and detail levels the body does not carry
//! in full), and the exact internal format of tool definitions, for which OpenAI's
//! cookbook formula is used. Those counts are estimates that can be short by the
//! unseen parts.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tiktoken_rs::CoreBPE;

mod chat;
pub use chat::count_chat_prompt;
use chat::{ChatMessage, REPLY_PRIMING, count_chat};

/// Largest output-token figure accepted from a request: anything above is a mistake.
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;

/// Largest prompt (its JSON text) counted exactly; a longer one is estimated at its
/// upper bound, one token per byte ([`prompt_upper_bound`]).
pub const MAX_COUNTED_BYTES: usize = 1024 * 1024;

/// Longest piece of text handed to the BPE at once. tiktoken's pre-tokenizer
/// backtracks on long whitespace runs: ~0.5 s of CPU for 768 KB of spaces, and a
/// panic (fancy-regex's backtrack limit, unwrapped) from about 1 MB under o200k.
/// Pieces this short cost little (linear in the text); a split can change the count by at most a
/// token per piece.
const CHUNK_BYTES: usize = 4 * 1024;

/// The BPE encodings tollgate counts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4 families.
    O200kBase,
    /// gpt-4, gpt-3.5, embeddings, and the approximation for non-OpenAI models.
    Cl100kBase,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// OpenAI model families tokenized with o200k_base (matched on the bare model id,
/// case-insensitively, followed by nothing or by a separator).
const O200K_FAMILIES: &[&str] =
    &["gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4", "codex"];

/// The encoding for a model id (`provider/` prefixes are ignored).
pub fn encoding_for_model(model: &str) -> Encoding {
    let bare = model.rsplit('/').next().unwrap_or(model).trim().to_ascii_lowercase();
    let is_family = |family: &&str| match bare.strip_prefix(*family) {
        Some(rest) => rest.is_empty() || rest.starts_with(['-', '.', ':', '@', '_']),
        None => false,
    };
    if O200K_FAMILIES.iter().any(is_family) { Encoding::O200kBase } else { Encoding::Cl100kBase }
}

static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
/// How many encodings this process has loaded: at most one per encoding, ever.
static ENCODER_LOADS: AtomicUsize = AtomicUsize::new(0);

fn encoder(encoding: Encoding) -> Option<&'static CoreBPE> {
    let cell = match encoding {
        Encoding::O200kBase => &O200K,
        Encoding::Cl100kBase => &CL100K,
    };
    cell.get_or_init(|| {
        ENCODER_LOADS.fetch_add(1, Ordering::Relaxed);
        let loaded = match encoding {
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
        };
        match loaded {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                // The ranks are compiled into the binary, so this cannot happen short
                // of a broken build; counting then falls back to bytes / 4.
                tracing::error!(encoding = encoding.name(), error = %e, "tokenizer failed to load");
                None
            }
        }
    })
    .as_ref()
}

/// Loads both encodings now (call at startup, off the request path).
pub fn preload() {
    let _ = encoder(Encoding::O200kBase);
    let _ = encoder(Encoding::Cl100kBase);
}

/// Tokens in `text` for `model`. Special-token markers in the text (`<|endoftext|>`)
/// count as ordinary text, as they do in user content sent to the API.
pub fn count_text(model: &str, text: &str) -> u64 {
    Counter::for_model(model).text(text)
}

/// One encoder chosen once per request, then used for every string in it.
#[derive(Clone, Copy)]
struct Counter {
    encoding: Encoding,
    bpe: Option<&'static CoreBPE>,
}

impl Counter {
    fn for_model(model: &str) -> Self {
        let encoding = encoding_for_model(model);
        Counter { encoding, bpe: encoder(encoding) }
    }

    /// Never panics: text is encoded in pieces of at most [`CHUNK_BYTES`], and a
    /// piece the encoder panics on counts as its bytes (an upper bound).
    fn text(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let Some(bpe) = self.bpe else { return (text.len() as u64).div_ceil(4) };
        let mut total = 0u64;
        let mut rest = text;
        while !rest.is_empty() {
            let cut = split_point(rest, CHUNK_BYTES);
            let (piece, tail) = rest.split_at(cut);
            let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bpe.encode_ordinary(piece).len()));
            total += match encoded {
                Ok(n) => n as u64,
                Err(_) => piece.len() as u64,
            };
            rest = tail;
        }
        total
    }
}

/// Where to end the next piece of `text`: all of it if it fits in `max` bytes, else
/// at the last start of a word in the second half of the window (where the
/// pre-tokenizer would split anyway), else at the last char boundary.
fn split_point(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let window = &text.as_bytes()[max / 2..end];
    let word_start = window.windows(2).rposition(|w| w[0].is_ascii_whitespace() && !w[1].is_ascii_whitespace());
    match word_start {
        Some(i) => max / 2 + i + 1,
        None => end,
    }
}

/// A bound no count of `prompt` can exceed, from its length alone (no parsing):
/// every token is at least one byte of text, a message's 3 tokens of overhead are
/// at most its braces and comma, the reply priming is 3, and tool definitions,
/// counted by the cookbook's formula, cost at most 4 tokens a byte plus 12.
pub fn prompt_upper_bound(prompt: Prompt<'_>) -> u64 {
    match prompt {
        Prompt::Chat { messages, tools, functions } => {
            let definitions = tools.map_or(0, |t| t.get().len()) + functions.map_or(0, |f| f.get().len());
            let definitions = if definitions == 0 { 0 } else { 4 * definitions as u64 + 12 };
            messages.get().len() as u64 + REPLY_PRIMING + definitions
        }
        Prompt::Text(raw) => raw.get().len() as u64,
        // Every token is at least one byte of a string value, which is inside the JSON.
        Prompt::Values(values) => values.iter().flatten().map(|v| v.get().len() as u64).sum(),
    }
}

/// The prompt's tokens, counted exactly when its JSON is at most
/// [`MAX_COUNTED_BYTES`], else (and for a shape the counter cannot read) its
/// [`prompt_upper_bound`]. CPU-bound: call it off the async workers.
pub fn count_prompt_capped(model: &str, prompt: Prompt<'_>) -> u64 {
    let bound = prompt_upper_bound(prompt);
    let size = match prompt {
        Prompt::Chat { messages, tools, functions } => {
            messages.get().len() + tools.map_or(0, |t| t.get().len()) + functions.map_or(0, |f| f.get().len())
        }
        Prompt::Text(raw) => raw.get().len(),
        Prompt::Values(values) => values.iter().flatten().map(|v| v.get().len()).sum(),
    };
    if size > MAX_COUNTED_BYTES {
        return bound;
    }
    count_prompt(model, prompt).unwrap_or(bound)
}

// ---- chat completions ----

/// Where a request's prompt lies, as the request view found it: raw JSON text
/// borrowed from the body, so the body is not parsed again to count it.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'a> {
    /// A chat request's `messages`, with its tool definitions.
    Chat { messages: &'a RawValue, tools: Option<&'a RawValue>, functions: Option<&'a RawValue> },
    /// A completions `prompt` or an embeddings `input`.
    Text(&'a RawValue),
    /// A prompt spread over several JSON values of another wire format (Anthropic's
    /// `system`, `messages` and `tools`; the Responses API's `instructions`, `input`
    /// and `tools`): counted as the tokens of every string value in them, with the
    /// OpenAI encoder of the model (an estimate for other providers' tokenizers).
    Values([Option<&'a RawValue>; 3]),
}

/// Prompt tokens of a prompt the request view located ([`Prompt`]), counted as
/// [`count_chat_prompt`], [`count_completion_prompt`] and [`count_embedding_input`]
/// count whole bodies. `None` when the prompt has a shape this cannot read.
pub fn count_prompt(model: &str, prompt: Prompt<'_>) -> Option<u64> {
    let counter = Counter::for_model(model);
    match prompt {
        Prompt::Chat { messages, tools, functions } => {
            let messages: Vec<ChatMessage<'_>> = serde_json::from_str(messages.get()).ok()?;
            Some(count_chat(counter, &messages, tools, functions))
        }
        Prompt::Text(raw) => Some(serde_json::from_str::<TextInput<'_>>(raw.get()).ok()?.count(counter)),
        Prompt::Values(values) => {
            let mut total = 0u64;
            for raw in values.iter().flatten() {
                let value: Value = serde_json::from_str(raw.get()).ok()?;
                total += count_strings(counter, &value);
            }
            Some(total)
        }
    }
}

/// Tokens of every string value (not key) in `value`.
fn count_strings(counter: Counter, value: &Value) -> u64 {
    match value {
        Value::String(s) => counter.text(s),
        Value::Array(items) => items.iter().map(|v| count_strings(counter, v)).sum(),
        Value::Object(map) => map.values().map(|v| count_strings(counter, v)).sum(),
        _ => 0,
    }
}

// ---- completions and embeddings ----

/// `prompt` / `input`: a string, an array of strings, an array of token ids, or an
/// array of arrays of token ids (token ids count one each, already tokenized).
#[derive(Deserialize)]
#[serde(untagged)]
enum TextInput<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Items(#[serde(borrow)] Vec<TextItem<'a>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextItem<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    /// A token id: it counts one, whatever its value.
    Token(#[allow(dead_code)] i64),
    Tokens(Vec<i64>),
}

impl TextInput<'_> {
    fn count(&self, counter: Counter) -> u64 {
        match self {
            TextInput::Text(text) => counter.text(text),
            TextInput::Items(items) => items
                .iter()
                .map(|item| match item {
                    TextItem::Text(text) => counter.text(text),
                    TextItem::Token(_) => 1,
                    TextItem::Tokens(tokens) => tokens.len() as u64,
                })
                .sum(),
        }
    }
}

#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(default, borrow)]
    prompt: Option<TextInput<'a>>,
}

#[derive(Deserialize)]
struct EmbeddingRequest<'a> {
    #[serde(default, borrow)]
    input: Option<TextInput<'a>>,
}

/// Prompt tokens of a `/v1/completions` body (`prompt`: string, array of strings, or
/// token arrays; no per-prompt overhead). `None` when there is no readable `prompt`.
pub fn count_completion_prompt(model: &str, body: &[u8]) -> Option<u64> {
    let request: CompletionRequest<'_> = serde_json::from_slice(body).ok()?;
    Some(request.prompt?.count(Counter::for_model(model)))
}

/// Input tokens of a `/v1/embeddings` body (`input`, same shapes as `prompt`).
/// `None` when there is no readable `input`.
pub fn count_embedding_input(model: &str, body: &[u8]) -> Option<u64> {
    let request: EmbeddingRequest<'_> = serde_json::from_slice(body).ok()?;
    Some(request.input?.count(Counter::for_model(model)))
}

// ---- output estimate ----

/// A request's output-token limit that cannot be right; the caller answers 400
/// naming `field`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct OutputTokensError {
    /// `max_completion_tokens` or `max_tokens`.
    pub field: &'static str,
    pub reason: String,
}

#[derive(Deserialize)]
struct OutputLimits {
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
}

/// The most output tokens a request may produce: `max_completion_tokens` if set,
/// else `max_tokens` (both are validated when present: an integer from 1 to
/// [`MAX_OUTPUT_TOKENS`]; `null` counts as absent). `Ok(None)` when neither is set
/// (the caller reserves its configured default) or the body is not a JSON object
/// (its own parse error is reported elsewhere). The figure is per choice: a request
/// with `n` > 1 can produce `n` times as much.
pub fn estimate_output_tokens(body: &[u8]) -> Result<Option<u64>, OutputTokensError> {
    let Ok(limits) = serde_json::from_slice::<OutputLimits>(body) else {
        return Ok(None);
    };
    let completion = validate_output_limit("max_completion_tokens", limits.max_completion_tokens.as_ref())?;
    let legacy = validate_output_limit("max_tokens", limits.max_tokens.as_ref())?;
    Ok(completion.or(legacy))
}

/// Checks one output-token field (`max_completion_tokens`, `max_tokens`): absent or
/// `null` is `None`, an integer from 1 to [`MAX_OUTPUT_TOKENS`] is itself, anything
/// else an error naming the field. The one definition of that cap.
pub fn validate_output_limit(field: &'static str, value: Option<&Value>) -> Result<Option<u64>, OutputTokensError> {
    let invalid =
        || OutputTokensError { field, reason: format!("must be an integer between 1 and {MAX_OUTPUT_TOKENS}") };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (1..=MAX_OUTPUT_TOKENS).contains(&v) => Ok(Some(v)),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megabytes_of_whitespace_are_counted_without_a_panic() {
        // Whole, o200k panics on this (a regex backtrack limit, unwrapped in tiktoken).
        for text in [format!("a{}b", " ".repeat(1_100_000)), "\n \t".repeat(100_000)] {
            for model in ["gpt-4o", "gpt-4"] {
                let n = count_text(model, &text);
                assert!(n >= 1 && n <= text.len() as u64, "{model}: {n}");
            }
        }
        let words = "hello world ".repeat(10_000);
        let whole = Counter::for_model("gpt-4o").bpe.expect("o200k").encode_ordinary(&words).len() as u64;
        let pieces = count_text("gpt-4o", &words);
        assert!(pieces.abs_diff(whole) <= (words.len() / CHUNK_BYTES) as u64 + 1, "{pieces} vs {whole}");
    }

    #[test]
    fn the_upper_bound_is_never_below_the_count() {
        let body = r#"{"messages":[{"role":"user","content":"a b c d e f g"},{"role":"assistant","name":"x","content":[{"type":"text","text":"日本語"}]},{}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{"properties":{"a":{"type":"string","enum":[1,2]}}}}}],
            "functions":[{},{}]}"#;
        #[derive(Deserialize)]
        struct B<'a> {
            #[serde(borrow)]
            messages: &'a RawValue,
            #[serde(borrow)]
            tools: &'a RawValue,
            #[serde(borrow)]
            functions: &'a RawValue,
        }
        let b: B<'_> = serde_json::from_str(body).expect("json");
        for model in ["gpt-4o", "gpt-4"] {
            let prompt = Prompt::Chat { messages: b.messages, tools: Some(b.tools), functions: Some(b.functions) };
            let counted = count_prompt(model, prompt).expect("count");
            assert!(counted <= prompt_upper_bound(prompt), "{counted} > {}", prompt_upper_bound(prompt));
            assert_eq!(count_prompt_capped(model, prompt), counted);
        }
        let text: &RawValue = serde_json::from_str(r#"[[1,2,3],"x y z",[4]]"#).expect("json");
        assert!(count_prompt("gpt-4o", Prompt::Text(text)).expect("count") <= prompt_upper_bound(Prompt::Text(text)));
    }

    #[test]
    fn hello_world_is_two_tokens_in_both_encodings() {
        assert_eq!(count_text("gpt-4o", "hello world"), 2);
        assert_eq!(count_text("gpt-3.5-turbo", "hello world"), 2);
        assert_eq!(count_text("gpt-4o", ""), 0);
        // The cookbook's example: "tiktoken is great!" is 6 tokens in cl100k_base
        // (t|ik|token| is| great|!).
        assert_eq!(count_text("gpt-4", "tiktoken is great!"), 6);
    }

    #[test]
    fn models_map_to_their_encoding() {
        use Encoding::*;
        for (model, encoding) in [
            ("gpt-4o", O200kBase),
            ("gpt-4o-mini-2024-07-18", O200kBase),
            ("openai/gpt-4.1-nano", O200kBase),
            ("GPT-5", O200kBase),
            ("o1", O200kBase),
            ("o3-mini", O200kBase),
            ("o4-mini-2025-04-16", O200kBase),
            ("gpt-4", Cl100kBase),
            ("gpt-4-turbo", Cl100kBase),
            ("gpt-3.5-turbo-0125", Cl100kBase),
            ("text-embedding-3-small", Cl100kBase),
            ("text-embedding-ada-002", Cl100kBase),
            ("claude-3-5-sonnet-20241022", Cl100kBase),
            ("gemini-2.5-pro", Cl100kBase),
            ("o10-fake", Cl100kBase),
        ] {
            assert_eq!(encoding_for_model(model), encoding, "{model}");
        }
    }

    #[test]
    fn one_user_hello_counts_as_openai_reports() {
        // 3 (message) + 1 ("user") + 1 ("Hello") + 3 (reply priming) = 8, which is
        // the prompt_tokens OpenAI reports for this request on gpt-4o and gpt-4o-mini.
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello"}]}"#;
        assert_eq!(count_chat_prompt("gpt-4o", body), Some(8));
        // "Hello!" is two tokens: 9.
        let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello!"}]}"#;
        assert_eq!(count_chat_prompt("gpt-4o", body), Some(9));
    }

    /// The OpenAI cookbook's example conversation ("How to count tokens with
    /// tiktoken"), whose counts the cookbook checked against the API: 129 prompt
    /// tokens for gpt-3.5-turbo and gpt-4, 124 for gpt-4o and gpt-4o-mini.
    const COOKBOOK_CHAT: &str = r#"{"model":"x","messages":[
        {"role":"system","content":"You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role":"system","name":"example_user","content":"New synergies will help drive top-line growth."},
        {"role":"system","name":"example_assistant","content":"Things working well together will increase revenue."},
        {"role":"system","name":"example_user","content":"Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
        {"role":"system","name":"example_assistant","content":"Let's talk later when we're less busy about how to do better."},
        {"role":"user","content":"This late pivot means we don't have time to boil the ocean for the client deliverable."}
    ]}"#;

    #[test]
    fn the_cookbook_conversation_counts_as_the_api_does() {
        assert_eq!(count_chat_prompt("gpt-3.5-turbo", COOKBOOK_CHAT.as_bytes()), Some(129));
        assert_eq!(count_chat_prompt("gpt-4", COOKBOOK_CHAT.as_bytes()), Some(129));
        assert_eq!(count_chat_prompt("gpt-4o", COOKBOOK_CHAT.as_bytes()), Some(124));
        assert_eq!(count_chat_prompt("gpt-4o-mini", COOKBOOK_CHAT.as_bytes()), Some(124));
    }

    #[test]
    fn the_cookbook_tools_example_counts_as_the_api_does() {
        // Checked against the API in the cookbook: 105 (gpt-3.5-turbo, gpt-4) and
        // 101 (gpt-4o, gpt-4o-mini) prompt tokens.
        let body = br#"{"model":"x","messages":[
            {"role":"system","content":"You are a helpful assistant that can answer to questions about the weather."},
            {"role":"user","content":"What's the weather like in San Francisco?"}],
          "tools":[{"type":"function","function":{"name":"get_current_weather",
            "description":"Get the current weather in a given location",
            "parameters":{"type":"object","properties":{
              "location":{"type":"string","description":"The city and state, e.g. San Francisco, CA"},
              "unit":{"type":"string","description":"The unit of temperature to return","enum":["celsius","fahrenheit"]}},
              "required":["location"]}}}]}"#;
        assert_eq!(count_chat_prompt("gpt-3.5-turbo", body), Some(105));
        assert_eq!(count_chat_prompt("gpt-4o", body), Some(101));
        // The legacy `functions` form counts the same.
        let legacy = br#"{"messages":[
            {"role":"system","content":"You are a helpful assistant that can answer to questions about the weather."},
            {"role":"user","content":"What's the weather like in San Francisco?"}],
          "functions":[{"name":"get_current_weather",
            "description":"Get the current weather in a given location",
            "parameters":{"type":"object","properties":{
              "location":{"type":"string","description":"The city and state, e.g. San Francisco, CA"},
              "unit":{"type":"string","description":"The unit of temperature to return","enum":["celsius","fahrenheit"]}}}}]}"#;
        assert_eq!(count_chat_prompt("gpt-4o", legacy), Some(101));
        // A tool list this cannot read still costs its JSON text.
        let odd = br#"{"messages":[{"role":"user","content":"Hello"}],"tools":{"not":"a list"}}"#;
        assert!(count_chat_prompt("gpt-4o", odd).is_some_and(|n| n > 8));
    }

    #[test]
    fn content_parts_names_and_tool_calls_are_counted_and_images_skipped() {
        let counter = Counter::for_model("gpt-4o");
        let parts = br#"{"messages":[{"role":"user","content":[
            {"type":"text","text":"Hello"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
            {"type":"text","text":" world"}]}]}"#;
        assert_eq!(
            count_chat_prompt("gpt-4o", parts),
            Some(3 + 1 + counter.text("Hello") + counter.text(" world") + 3)
        );
        let named = br#"{"messages":[{"role":"user","name":"bob","content":"Hello"}]}"#;
        assert_eq!(count_chat_prompt("gpt-4o", named), Some(8 + counter.text("bob") + 1));
        let tools = br#"{"messages":[
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
              "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}"#;
        let expected = 3
            + counter.text("assistant")
            + counter.text("get_weather")
            + counter.text(r#"{"city":"Paris"}"#)
            + 3
            + counter.text("tool")
            + counter.text("call_1")
            + counter.text("sunny")
            + 3;
        assert_eq!(count_chat_prompt("gpt-4o", tools), Some(expected));
        // Not a chat body: no count (the caller falls back).
        assert_eq!(count_chat_prompt("gpt-4o", br#"{"prompt":"hi"}"#), None);
        assert_eq!(count_chat_prompt("gpt-4o", b"not json"), None);
        assert_eq!(count_chat_prompt("gpt-4o", br#"{"messages":[]}"#), Some(3));
    }

    #[test]
    fn completion_and_embedding_inputs_in_every_shape() {
        assert_eq!(count_completion_prompt("gpt-3.5-turbo-instruct", br#"{"prompt":"hello world"}"#), Some(2));
        assert_eq!(
            count_completion_prompt("gpt-3.5-turbo-instruct", br#"{"prompt":["hello world","hello"]}"#),
            Some(3)
        );
        assert_eq!(count_completion_prompt("davinci-002", br#"{"prompt":[15339, 1917]}"#), Some(2));
        assert_eq!(count_completion_prompt("davinci-002", br#"{"prompt":[[15339, 1917],[15339]]}"#), Some(3));
        assert_eq!(count_completion_prompt("davinci-002", br#"{"model":"x"}"#), None);
        assert_eq!(count_embedding_input("text-embedding-3-small", br#"{"input":"hello world"}"#), Some(2));
        assert_eq!(
            count_embedding_input("text-embedding-3-small", br#"{"input":["hello world","hello\nworld"]}"#),
            Some(5)
        );
        assert_eq!(count_embedding_input("text-embedding-3-small", br#"{"input":{"x":1}}"#), None);
    }

    #[test]
    fn output_limits_are_read_and_validated() {
        assert_eq!(estimate_output_tokens(br#"{"max_tokens":256}"#), Ok(Some(256)));
        assert_eq!(estimate_output_tokens(br#"{"max_completion_tokens":100,"max_tokens":256}"#), Ok(Some(100)));
        assert_eq!(estimate_output_tokens(br#"{"max_completion_tokens":null,"max_tokens":7}"#), Ok(Some(7)));
        assert_eq!(estimate_output_tokens(br#"{"model":"gpt-4o"}"#), Ok(None));
        assert_eq!(estimate_output_tokens(b"not json"), Ok(None));
        assert_eq!(estimate_output_tokens(br#"{"max_tokens":10000000}"#), Ok(Some(10_000_000)));
        for (body, field) in [
            (&br#"{"max_tokens":-1}"#[..], "max_tokens"),
            (br#"{"max_tokens":0}"#, "max_tokens"),
            (br#"{"max_tokens":10000001}"#, "max_tokens"),
            (br#"{"max_tokens":1e30}"#, "max_tokens"),
            (br#"{"max_tokens":12.5}"#, "max_tokens"),
            (br#"{"max_tokens":"100"}"#, "max_tokens"),
            (br#"{"max_completion_tokens":-5,"max_tokens":10}"#, "max_completion_tokens"),
            (br#"{"max_completion_tokens":10,"max_tokens":-5}"#, "max_tokens"),
        ] {
            let err = estimate_output_tokens(body).err();
            assert_eq!(err.as_ref().map(|e| e.field), Some(field), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn each_encoder_is_loaded_once_per_process() {
        // Many threads race for both encodings; each OnceLock runs its loader once.
        std::thread::scope(|s| {
            for i in 0..8 {
                s.spawn(move || {
                    let model = if i % 2 == 0 { "gpt-4o" } else { "gpt-4" };
                    for _ in 0..10 {
                        assert_eq!(count_text(model, "hello world"), 2);
                    }
                });
            }
        });
        preload();
        assert_eq!(ENCODER_LOADS.load(Ordering::Relaxed), 2);
        assert!(O200K.get().is_some_and(Option::is_some) && CL100K.get().is_some_and(Option::is_some));
    }
}
