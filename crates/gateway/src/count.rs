//! Token counting off the async workers. Counting is CPU-bound (milliseconds for a
//! large prompt), so it never runs on a worker that serves other requests: it runs on
//! tokio's blocking pool, at most [`COUNTING_THREADS`] at a time, size-capped
//! (`tollgate_tokenize::MAX_COUNTED_BYTES`) and panic-safe. Admission needs it only
//! when a byte-length bound would refuse a request (close to a limit); settlement
//! only when the upstream reported no usage.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tollgate_providers::{Endpoint, RequestView};
use tollgate_tokenize::{count_prompt_capped, count_text, prompt_upper_bound};

/// Counting jobs running at once; more wait their turn (without holding a worker).
pub const COUNTING_THREADS: usize = 2;

static COUNTING: Semaphore = Semaphore::const_new(COUNTING_THREADS);

/// Runs `job` on the blocking pool under the counting bound; `None` if it panicked
/// (or the pool is gone: the runtime is shutting down).
async fn off_worker<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let _permit = COUNTING.acquire().await.ok()?;
    let ran = tokio::task::spawn_blocking(move || catch_unwind(AssertUnwindSafe(job)).ok()).await;
    ran.ok().flatten()
}

/// The byte-length bound of a request's prompt (no tokenizer): what admission
/// reserves first. A completions request without `prompt` has the one-token default.
pub fn prompt_bound(view: &RequestView<'_>) -> u64 {
    view.prompt.map_or(1, prompt_upper_bound)
}

/// The prompt tokens of `body` (a request on `endpoint`), counted off the workers;
/// beyond the size cap, or if counting fails, its byte-length bound.
pub async fn prompt_tokens(endpoint: Endpoint, body: Bytes) -> u64 {
    let fallback = body.len() as u64;
    off_worker(move || match RequestView::parse(endpoint, &body) {
        Ok(view) => match view.prompt {
            Some(prompt) => count_prompt_capped(&view.model, prompt),
            None => 1,
        },
        Err(_) => body.len() as u64,
    })
    .await
    .unwrap_or(fallback)
}

/// What an answer delivered, to count when the upstream reported no usage.
pub enum Delivered {
    /// The streamed completion text.
    Text(String),
    /// A whole JSON answer (its generated text is read from it off the workers).
    Json(Bytes),
    Nothing,
}

/// The completion tokens of what was delivered, counted off the workers (a text
/// beyond the size cap, or one the counter fails on, counts a token per byte).
pub async fn completion_tokens(model: String, delivered: Delivered) -> u64 {
    let (text, json) = match delivered {
        Delivered::Nothing => return 0,
        Delivered::Text(text) => (Some(text), None),
        Delivered::Json(body) => (None, Some(body)),
    };
    let fallback = text.as_ref().map_or(0, |t| t.len() as u64);
    off_worker(move || {
        let text = text.unwrap_or_else(|| json.map(|j| completion_text_from_json(&j)).unwrap_or_default());
        if text.len() > tollgate_tokenize::MAX_COUNTED_BYTES { text.len() as u64 } else { count_text(&model, &text) }
    })
    .await
    .unwrap_or(fallback)
}

/// The generated text of a chat or completions answer, an Anthropic message
/// (`content[].text`) or a Responses answer (`output[].content[].text`).
fn completion_text_from_json(body: &[u8]) -> String {
    use serde::Deserialize;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        content: Vec<Block>,
        #[serde(default)]
        output: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Block {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        thinking: Option<String>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(default)]
        content: Vec<Block>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else { return String::new() };
    let mut text = String::new();
    for choice in answer.choices {
        if let Some(t) = choice.text {
            text.push_str(&t);
        }
        if let Some(c) = choice.message.and_then(|m| m.content) {
            text.push_str(&c);
        }
    }
    let blocks = answer.content.into_iter().chain(answer.output.into_iter().flat_map(|item| item.content));
    for block in blocks {
        for t in [block.text, block.thinking].into_iter().flatten() {
            text.push_str(&t);
        }
    }
    text
}
