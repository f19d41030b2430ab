//! Redis key names: one prefix per deployment (or per test), one hash tag per
//! partition, and an unambiguous, readable name per counter.

use std::fmt::Write;

use tollgate_core::{Metric, Window};
use tollgate_store::LimitItem;

/// The names of every key one deployment uses, under one prefix (`tg:` by default;
/// tests use a fresh prefix each so they can share a Redis).
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: String,
}

/// Appends `text`, percent-escaping what would make names ambiguous or break the hash
/// tag (`|`, `%`, `{`, `}`, `*`, whitespace and control characters).
fn push_escaped(out: &mut String, text: &str) {
    for ch in text.chars() {
        if matches!(ch, '|' | '%' | '{' | '}' | '*') || ch.is_whitespace() || ch.is_control() {
            let mut buf = [0u8; 4];
            for b in ch.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(ch);
        }
    }
}

pub(crate) fn window_code(window: Window) -> &'static str {
    match window {
        Window::Minute => "m",
        Window::Hour => "h",
        Window::Day => "d",
        Window::Month => "M",
    }
}

pub(crate) fn metric_code(metric: Metric) -> &'static str {
    match metric {
        Metric::Requests => "r",
        Metric::InputTokens => "i",
        Metric::OutputTokens => "o",
        Metric::TotalTokens => "t",
        Metric::CostMicros => "c",
    }
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn tagged(&self, partition: &str, kind: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + partition.len() + 48);
        key.push_str(&self.prefix);
        key.push('{');
        push_escaped(&mut key, partition);
        key.push_str("}:");
        key.push_str(kind);
        key.push(':');
        key
    }

    /// The base key of an item's counter: its subject, metric, window and scope. The
    /// limit is not part of it, so changing a plan's number keeps what was counted.
    pub fn counter(&self, partition: &str, item: &LimitItem) -> String {
        let spec = &item.spec;
        let mut key = self.tagged(partition, "c");
        push_escaped(&mut key, &item.subject);
        key.push('|');
        key.push_str(spec.metric.as_str());
        key.push('|');
        key.push_str(spec.window.as_str());
        for scope in [&spec.provider, &spec.model, &spec.endpoint] {
            key.push('|');
            match scope {
                Some(value) => push_escaped(&mut key, value),
                None => key.push('*'),
            }
        }
        key
    }

    /// Where a held reservation is recorded.
    pub fn reservation(&self, partition: &str, request_id: &str) -> String {
        let mut key = self.tagged(partition, "r");
        push_escaped(&mut key, request_id);
        key
    }

    /// Where the lease named `name` is kept (one key, no partition).
    pub fn lease(&self, name: &str) -> String {
        format!("{}lease:{name}", self.prefix)
    }

    /// The pub/sub channel of catalog changes.
    pub fn changes_channel(&self) -> String {
        format!("{}catalog-changes", self.prefix)
    }
}

#[cfg(test)]
mod tests {

    use tollgate_core::LimitSpec;

    use super::*;

    #[test]
    fn names_share_the_partition_tag_and_never_collide() {
        let keys = KeySpace::new("tg:");
        let item = |subject: &str, spec: LimitSpec| LimitItem::new(subject, spec);
        let plain = keys.counter("acme", &item("key:abc", LimitSpec::new(Metric::Requests, Window::Minute, 10)));
        assert_eq!(plain, "tg:{acme}:c:key:abc|requests|minute|*|*|*");
        let scoped = keys
            .counter("acme", &item("ip:::1", LimitSpec::new(Metric::TotalTokens, Window::Day, 10).for_model("a|b*")));
        assert_eq!(scoped, "tg:{acme}:c:ip:::1|total_tokens|day|*|a%7Cb%2A|*");
        assert_eq!(keys.reservation("acme", "req_1"), "tg:{acme}:r:req_1");
        assert_eq!(keys.reservation("ac}me", "r"), "tg:{ac%7Dme}:r:r", "a brace cannot end the tag early");
    }
}
