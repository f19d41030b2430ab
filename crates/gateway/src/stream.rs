//! Phase 4, stream back: the upstream body passes to the client chunk by chunk while
//! its usage is read (an SSE stream's usage chunk, hidden when tollgate asked for
//! it; a JSON body's usage block), and the settlement is finished when the body
//! ends, breaks, or is dropped because the client went away.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tollgate_providers::sse::{Dialect, SseRewriter};
use tollgate_providers::translate::MessagesToChatStream;
use tollgate_providers::{UpstreamError, UsageScanner};

use tollgate_cache::Entry;
use tollgate_cache::assemble::StreamAssembler;

use crate::cache::CacheTarget;

use crate::settle::{CommitFuture, Outcome, Settlement};

/// An upstream body: chunks as they arrive.
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// How the body is watched for usage on its way to the client.
pub enum Watcher {
    Json(UsageScanner),
    Sse(SseRewriter),
    /// Not watched (an answer that is not accounted, like the model list).
    Pass,
}

/// Passes the upstream body through chunk by chunk while watching for usage; the
/// settlement is finished at the end of the body, on an upstream error, or on drop (the
/// client went away), whichever comes first, with what was delivered so far. In
/// `sync` durability the end of the body waits for the ledger commit: an SSE stream's
/// `data: [DONE]` is held back until then, and replaced by an OpenAI-shaped error
/// event if the commit fails (or takes longer than `commit_timeout`).
pub struct AccountingStream {
    inner: UpstreamBody,
    watcher: Watcher,
    settlement: Option<Settlement>,
    commit: Option<CommitFuture>,
    /// Bytes to send after the commit (a held-back event, or an error event).
    tail: Option<Bytes>,
    /// The stream's clean end (`data: [DONE]`), sent only once the commit is done.
    clean_end: Option<Bytes>,
    done: bool,
    /// The request's total deadline (`upstream.total_timeout_secs`) and its length.
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, std::time::Duration)>,
    /// A streamed cache miss: the stream is assembled into its JSON answer and stored
    /// if it completes.
    cache: Option<Box<CacheTap>>,
    /// Anthropic's events turned into chat-completion chunks on their way out (a
    /// chat completion routed to Claude); usage is read before, from the events.
    translate: Option<Box<MessagesToChatStream>>,
}

/// Where a streamed miss is assembled, and where it is stored.
pub struct CacheTap {
    pub assembler: StreamAssembler,
    pub target: CacheTarget,
}

impl AccountingStream {
    pub fn new(inner: UpstreamBody, watcher: Watcher, settlement: Settlement) -> Self {
        Self {
            inner,
            watcher,
            settlement: Some(settlement),
            commit: None,
            tail: None,
            clean_end: None,
            done: false,
            deadline: None,
            cache: None,
            translate: None,
        }
    }

    /// Translates what goes out with `translator` (see the `translate` field).
    pub fn with_translation(mut self, translator: MessagesToChatStream) -> Self {
        self.translate = Some(Box::new(translator));
        self
    }

    /// What goes to the client for `out`: itself, or its translation.
    fn outgoing(&mut self, out: Bytes) -> Bytes {
        match &mut self.translate {
            Some(translator) => translator.push(&out),
            None => out,
        }
    }

    /// The translator's last words at the end of the body, once.
    fn translated_end(&mut self) -> Option<Bytes> {
        let mut translator = self.translate.take()?;
        let end = translator.finish();
        (!end.is_empty()).then_some(end)
    }

    /// Ends the body at `at` (the request's total deadline, `total` after it began)
    /// if it has not ended by then: a stream gets an error event and is settled for
    /// what it delivered.
    pub fn with_deadline(mut self, at: tokio::time::Instant, total: std::time::Duration) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(at)), total));
        self
    }

    /// Assembles the stream as it passes and stores it as `tap.target` says if it completes.
    pub fn with_cache(mut self, tap: CacheTap) -> Self {
        self.cache = Some(Box::new(tap));
        self
    }

    /// Stores the assembled answer of a stream that ended cleanly.
    fn store_in_cache(&mut self) {
        let Some(tap) = self.cache.take() else { return };
        let Some(gateway) = self.settlement.as_ref().and_then(Settlement::gateway).cloned() else { return };
        let CacheTap { assembler, target } = *tap;
        if let Some(done) = assembler.finish() {
            let entry = Entry {
                created_ms: crate::now_ms(),
                model: done.model,
                prompt_tokens: done.prompt_tokens,
                completion_tokens: done.completion_tokens,
                cached_tokens: done.cached_tokens,
                body: done.body,
            };
            gateway.cache_put(target, entry);
        }
    }

    /// Ends the body early: an SSE stream gets what the rewriter held back and then
    /// `event`; another body ends with an I/O error (returned). Settles either way.
    fn break_off(&mut self, event: Bytes, error: String) -> Option<std::io::Error> {
        self.done = true;
        // A broken stream has no clean end to hold back for the commit, and is not cached.
        self.clean_end = None;
        self.cache = None;
        match &mut self.watcher {
            Watcher::Sse(rewriter) => {
                let mut tail = bytes::BytesMut::from(&rewriter.flush()[..]);
                tail.extend_from_slice(&event);
                self.tail = Some(tail.freeze());
                self.finish();
                None
            }
            Watcher::Json(_) | Watcher::Pass => {
                self.finish();
                Some(std::io::Error::other(error))
            }
        }
    }

    /// The wire format of the stream's events (OpenAI's for a body that is not SSE).
    fn dialect(&self) -> Dialect {
        match &self.watcher {
            Watcher::Sse(rewriter) => rewriter.dialect(),
            Watcher::Json(_) | Watcher::Pass => Dialect::OpenAi,
        }
    }

    /// A body passed through untouched, with nothing to account.
    pub fn passthrough(inner: UpstreamBody) -> Self {
        Self {
            inner,
            watcher: Watcher::Pass,
            settlement: None,
            commit: None,
            tail: None,
            clean_end: None,
            done: false,
            deadline: None,
            cache: None,
            translate: None,
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.settlement.take() {
            let outcome = match &mut self.watcher {
                Watcher::Json(scanner) => Outcome::Json { usage: scanner.finish(), body: None, model: None },
                Watcher::Sse(rewriter) => Outcome::Stream(rewriter.finish()),
                Watcher::Pass => Outcome::Nothing,
            };
            self.commit = f.finish(outcome);
        }
    }
}

/// The SSE event that ends a stream the upstream broke off, so SDKs raise a clear
/// error instead of seeing a silently truncated answer (in the stream's own format).
fn broken_stream_event(dialect: Dialect, e: &UpstreamError) -> Bytes {
    let (code, message) = match e {
        UpstreamError::Timeout(d) => {
            ("upstream_timeout", format!("The upstream provider stopped sending for {}s.", d.as_secs()))
        }
        _ => ("upstream_stream_broken", "The upstream provider's stream broke off.".to_owned()),
    };
    dialect.error_event("upstream_error", code, &message)
}

/// The event that ends a stream whose usage record could not be committed, instead
/// of its clean end: the content was delivered, but the request is not recorded.
fn not_recorded_event(dialect: Dialect, why: &str) -> Bytes {
    let message = format!(
        "The upstream provider answered and its answer was streamed, but tollgate could not record this \
         request's usage ({why}); the stream is not complete. Retry later."
    );
    dialect.error_event("api_error", "usage_not_recorded", &message)
}

/// The SSE event that ends a stream still running at the request's total deadline.
fn deadline_event(dialect: Dialect, total: std::time::Duration) -> Bytes {
    let message = format!(
        "The request ran past its total time limit of {}s (upstream.total_timeout_secs); the stream was cut off.",
        total.as_secs()
    );
    dialect.error_event("upstream_error", "request_timeout", &message)
}

impl Stream for AccountingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                if let Some(commit) = this.commit.as_mut() {
                    let Poll::Ready(committed) = commit.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    this.commit = None;
                    if let Err(why) = committed {
                        this.clean_end = None;
                        let dialect = this.dialect();
                        let mut tail = bytes::BytesMut::from(&this.tail.take().unwrap_or_default()[..]);
                        tail.extend_from_slice(&not_recorded_event(dialect, &why));
                        this.tail = Some(tail.freeze());
                    }
                }
                let tail = match (this.tail.take(), this.clean_end.take()) {
                    (Some(tail), Some(end)) => Some(Bytes::from([&tail[..], &end[..]].concat())),
                    (tail, end) => tail.or(end),
                };
                let tail = match tail {
                    Some(tail) => Some(this.outgoing(tail)).filter(|t| !t.is_empty() || this.translate.is_none()),
                    None => this.translated_end(),
                };
                match tail {
                    // A tail that translated to nothing: the translator's end next.
                    None if this.translate.is_some() => continue,
                    tail => return Poll::Ready(tail.map(Ok)),
                }
            }
            if let Some((sleep, total)) = this.deadline.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                let total = *total;
                this.deadline = None;
                tracing::warn!(total_secs = total.as_secs(), "a stream ran past the request's total deadline");
                let error = format!("the request ran past its total time limit of {}s", total.as_secs());
                match this.break_off(deadline_event(this.dialect(), total), error) {
                    None => continue,
                    Some(error) => return Poll::Ready(Some(Err(error))),
                }
            }
            return match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = match &mut this.watcher {
                        Watcher::Json(scanner) => {
                            scanner.observe(&chunk);
                            chunk
                        }
                        Watcher::Sse(rewriter) => {
                            if let Some(tap) = &mut this.cache {
                                tap.assembler.feed(&chunk);
                            }
                            let out = rewriter.process(chunk);
                            if let Some(end) = this.clean_end.as_mut() {
                                // What follows the clean end waits with it.
                                if !out.is_empty() {
                                    *end = Bytes::from([&end[..], &out[..]].concat());
                                }
                                continue;
                            }
                            match rewriter.dialect().split_clean_end(&out) {
                                Some((before, end)) => {
                                    this.clean_end = Some(end);
                                    before
                                }
                                None => out,
                            }
                        }
                        Watcher::Pass => chunk,
                    };
                    let out = this.outgoing(out);
                    if out.is_empty() {
                        continue;
                    }
                    Poll::Ready(Some(Ok(out)))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body broke off");
                    match this.break_off(broken_stream_event(this.dialect(), &e), e.to_string()) {
                        None => continue,
                        Some(error) => Poll::Ready(Some(Err(error))),
                    }
                }
                Poll::Ready(None) => {
                    // An event the rewriter held back (it might have been the usage
                    // chunk) goes out before the end.
                    let tail = match &mut this.watcher {
                        Watcher::Sse(rewriter) => rewriter.flush(),
                        Watcher::Json(_) | Watcher::Pass => Bytes::new(),
                    };
                    // What follows a `[DONE]` already seen belongs to the clean end;
                    // a `[DONE]` held back until now becomes the clean end.
                    match (this.clean_end.take(), this.dialect().split_clean_end(&tail)) {
                        (Some(end), _) => this.clean_end = Some(Bytes::from([&end[..], &tail[..]].concat())),
                        (None, Some((before, end))) => {
                            this.tail = (!before.is_empty()).then_some(before);
                            this.clean_end = Some(end);
                        }
                        (None, None) => this.tail = (!tail.is_empty()).then_some(tail),
                    }
                    this.done = true;
                    this.store_in_cache();
                    this.finish();
                    continue;
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Drop for AccountingStream {
    /// The client went away (or the body ended). A stream dropped before its end,
    /// whose usage has not been read yet, is drained in a tracked task, briefly
    /// ([`GatewaySettings::drain_after_hangup`] and `_bytes`): a client that closes
    /// right after the last content chunk must not lose the usage chunk that follows.
    fn drop(&mut self) {
        let wants_drain = !self.done && matches!(&self.watcher, Watcher::Sse(r) if !r.has_usage());
        let gateway = self.settlement.as_ref().and_then(Settlement::gateway).cloned();
        if let (true, Some(gateway), Ok(runtime)) = (wants_drain, gateway, tokio::runtime::Handle::try_current())
            && let Some(settlement) = self.settlement.take()
        {
            let inner = std::mem::replace(&mut self.inner, Box::pin(futures_util::stream::empty()));
            let Watcher::Sse(rewriter) = std::mem::replace(&mut self.watcher, Watcher::Pass) else { return };
            let (time, bytes) = (gateway.settings.drain_after_hangup, gateway.settings.drain_after_hangup_bytes);
            gateway.tasks.spawn_on(drain(inner, rewriter, settlement, time, bytes), &runtime);
            return;
        }
        self.finish();
    }
}

/// Reads what is left of a stream whose client left, until its usage is read, it
/// ends, `max_bytes` were read or `max_time` passed; then settles with what it saw.
async fn drain(
    mut inner: UpstreamBody,
    mut rewriter: SseRewriter,
    settlement: Settlement,
    max_time: std::time::Duration,
    max_bytes: usize,
) {
    let read_rest = async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = inner.next().await {
            read = read.saturating_add(chunk.len());
            let _ = rewriter.process(chunk);
            if rewriter.has_usage() || read >= max_bytes {
                break;
            }
        }
    };
    if tokio::time::timeout(max_time, read_rest).await.is_err() {
        tracing::debug!("the stream's usage did not come within the drain time after the client left");
    }
    let _ = rewriter.flush();
    // Nobody waits for the commit: the client is gone.
    let _commit = settlement.finish(Outcome::Stream(rewriter.finish()));
}
