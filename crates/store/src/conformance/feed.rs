//! The ledger in commit order ([`LedgerFeed`](crate::LedgerFeed)): numbers follow the
//! commits (not the records' times), a replayed id takes no place, pages continue
//! after a position, and a sink's stored cursor only moves forward.
//!
//! The feed is not filtered by project, so the scenario keeps only its own records
//! when it reads; it shares a ledger with the other scenarios.

use tollgate_core::UsageRecord;

use super::NOW;
use crate::{Ledger, LedgerFeed};

fn record(id: &str, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms,
        project_id: "conf-feed".to_owned(),
        key_id: "confFeedKey".to_owned(),
        endpoint: "chat.completions".to_owned(),
        status: 200,
        counted: true,
        requests: 1,
        ..UsageRecord::default()
    }
}

/// Every record of the feed after `after`, read in pages of three.
async fn all_after(feed: &dyn LedgerFeed, mut after: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    loop {
        let page = feed.feed_after(after, 3).await.expect("feed page");
        assert!(page.len() <= 3, "a page holds at most its limit");
        let Some(last) = page.last() else { return out };
        after = last.seq;
        out.extend(page.into_iter().filter(|r| r.record.project_id == "conf-feed").map(|r| (r.seq, r.record.id)));
    }
}

/// Commit order, replays, paging and the cursor.
pub async fn records_follow_commit_order_and_cursors_move_forward(ledger: &dyn Ledger, feed: &dyn LedgerFeed) {
    let sink = "conformance-feed";
    assert_eq!(feed.feed_cursor(sink).await.expect("cursor"), 0, "a new sink starts at 0");
    // The first commit holds later times than the second: the feed follows commits.
    for (id, ts) in [("conf-feed-1", NOW + 500), ("conf-feed-2", NOW + 400), ("conf-feed-3", NOW + 300)] {
        ledger.append(record(id, ts));
    }
    ledger.flush().await.expect("flush");
    ledger.append(record("conf-feed-2", NOW + 400));
    ledger.append(record("conf-feed-4", NOW));
    ledger.flush().await.expect("flush");
    let fresh = ledger.append_new(vec![record("conf-feed-5", NOW - 1), record("conf-feed-1", NOW)]).await;
    assert_eq!(fresh.expect("append_new"), vec![true, false]);

    let seen = all_after(feed, 0).await;
    let ids: Vec<&str> = seen.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, ["conf-feed-1", "conf-feed-2", "conf-feed-3", "conf-feed-4", "conf-feed-5"], "commit order, once");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "numbers increase: {seen:?}");
    let third = seen[2].0;
    let rest: Vec<String> = all_after(feed, third).await.into_iter().map(|(_, id)| id).collect();
    assert_eq!(rest, ["conf-feed-4", "conf-feed-5"], "reading after a position continues there");

    let lag = feed.feed_lag(third).await.expect("lag");
    assert!(lag >= 2, "at least this scenario's two records are after the position: {lag}");
    let oldest = feed.feed_oldest_after(third).await.expect("oldest");
    assert!(oldest.is_some_and(|t| t < NOW), "the oldest undelivered time: {oldest:?}");
    let last = seen[4].0;
    let end = feed_end(feed).await;
    assert_eq!(feed.feed_lag(end).await.expect("lag at the end"), 0);
    assert_eq!(feed.feed_lag(end + 10).await.expect("lag past the end"), 0);
    assert_eq!(feed.feed_oldest_after(end).await.expect("oldest at the end"), None);

    feed.advance_feed_cursor(sink, third, NOW).await.expect("advance");
    assert_eq!(feed.feed_cursor(sink).await.expect("cursor"), third);
    feed.advance_feed_cursor(sink, seen[0].0, NOW).await.expect("advance backwards");
    assert_eq!(feed.feed_cursor(sink).await.expect("cursor"), third, "a cursor never moves back");
    feed.advance_feed_cursor(sink, last, NOW).await.expect("advance");
    assert_eq!(feed.feed_cursor(sink).await.expect("cursor"), last);
    assert_eq!(feed.feed_cursor("conformance-other-sink").await.expect("cursor"), 0, "cursors are per sink");
}

/// The last number of the whole feed.
async fn feed_end(feed: &dyn LedgerFeed) -> i64 {
    let mut after = 0;
    loop {
        let page = feed.feed_after(after, 1_000).await.expect("feed page");
        match page.last() {
            Some(last) => after = last.seq,
            None => return after,
        }
    }
}
