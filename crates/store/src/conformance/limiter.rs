//! Limiter scenarios: exact admission under contention, all-or-nothing decisions,
//! settlement, retry and reset times, unchecked charges and pruning.
//!
//! Each scenario wants a limiter of its own (or at least one no other scenario uses at
//! the same time): they count held reservations and call `prune`.

use std::sync::Arc;

use tollgate_core::calendar::{MS_PER_DAY, MS_PER_MINUTE, next_month_start};
use tollgate_core::{Amounts, Decision, LimitSpec, Metric, Window};

use super::NOW;
use crate::{LimitItem, Limiter, ReserveRequest, SettleRequest};

/// The partition every scenario uses (one project).
const PARTITION: &str = "conf-project";

fn item(subject: &str, metric: Metric, window: Window, limit: u64) -> LimitItem {
    LimitItem::new(subject, LimitSpec::new(metric, window, limit))
}

fn tokens(input: u64, output: u64) -> Amounts {
    Amounts { input_tokens: input, output_tokens: output, ..Amounts::default() }
}

async fn reserve(
    limiter: &dyn Limiter,
    id: &str,
    items: &[LimitItem],
    amounts: Amounts,
    now_ms: i64,
    hold: bool,
) -> Decision {
    limiter
        .reserve(ReserveRequest {
            partition: PARTITION,
            request_id: id,
            items,
            amounts,
            now_ms,
            hold,
            hold_ms: crate::DEFAULT_RESERVATION_TTL_MS,
        })
        .await
        .expect("reserve")
}

async fn settle(limiter: &dyn Limiter, id: &str, actual: Amounts, now_ms: i64) {
    limiter.settle(SettleRequest { partition: PARTITION, request_id: id, actual, now_ms }).await.expect("settle");
}

/// What `item` has counted at `now_ms`, read through `peek`.
async fn used(limiter: &dyn Limiter, item: &LimitItem, now_ms: i64) -> u64 {
    let decision = limiter.peek(PARTITION, std::slice::from_ref(item), Amounts::default(), now_ms).await.expect("peek");
    assert_eq!(decision.statuses.len(), 1, "peek answers one status per item");
    decision.statuses[0].used
}

async fn held(limiter: &dyn Limiter) -> usize {
    limiter.held_reservations().await.expect("held reservations")
}

/// N concurrent reservations against M remaining admit exactly min(N, M), each
/// admitted one seeing a distinct count; with two limits, the refused requests charge
/// neither.
pub async fn exact_admission_under_concurrency(limiter: Arc<dyn Limiter>) {
    const TASKS: usize = 200;
    const REMAINING: u64 = 50;
    let minute = item("key:conf-concurrency", Metric::Requests, Window::Minute, 60);
    limiter
        .apply(PARTITION, std::slice::from_ref(&minute), Amounts::requests(60 - REMAINING), NOW)
        .await
        .expect("apply");
    let held_before = held(&*limiter).await;

    let items: Arc<[LimitItem]> = Arc::from(vec![minute.clone()]);
    let mut tasks = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        let (limiter, items) = (limiter.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("conf-concurrency-{i}");
            reserve(&*limiter, &id, &items, Amounts::ONE_REQUEST, NOW, true).await
        }));
    }
    let mut admitted_used = Vec::new();
    for task in tasks {
        let decision = task.await.expect("reserve task");
        assert_eq!(decision.statuses.len(), 1);
        match decision.refused {
            None => admitted_used.push(decision.statuses[0].used),
            Some(refusal) => {
                assert_eq!(refusal.index, 0);
                assert_eq!(decision.statuses[0].remaining, 0, "refused at a full window");
            }
        }
    }
    admitted_used.sort_unstable();
    let expected: Vec<u64> = (60 - REMAINING + 1..=60).collect();
    assert_eq!(admitted_used, expected, "exactly {REMAINING} of {TASKS} admitted, each seeing its own count");
    assert_eq!(used(&*limiter, &minute, NOW).await, 60);
    assert_eq!(held(&*limiter).await, held_before + REMAINING as usize);

    // Two limits under contention: the second (month) limit is never charged for a
    // request the first refused.
    let rate = item("key:conf-concurrency-2", Metric::Requests, Window::Minute, 30);
    let quota = item("key:conf-concurrency-2", Metric::Requests, Window::Month, 1_000);
    let items: Arc<[LimitItem]> = Arc::from(vec![rate.clone(), quota.clone()]);
    let mut tasks = Vec::with_capacity(100);
    for i in 0..100 {
        let (limiter, items) = (limiter.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("conf-concurrency-2-{i}");
            reserve(&*limiter, &id, &items, Amounts::ONE_REQUEST, NOW, false).await
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        let decision = task.await.expect("reserve task");
        if decision.allowed() {
            admitted += 1;
        } else {
            assert_eq!(decision.refused.map(|r| r.index), Some(0));
        }
    }
    assert_eq!(admitted, 30);
    assert_eq!(used(&*limiter, &rate, NOW).await, 30);
    assert_eq!(used(&*limiter, &quota, NOW).await, 30, "refused requests charged the quota");
}

/// When one limit refuses, nothing is charged and `refused.index` names the first
/// refusing limit.
pub async fn all_or_nothing(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let rate = item("key:conf-aon", Metric::Requests, Window::Minute, 100);
    let quota = item("key:conf-aon", Metric::Requests, Window::Month, 5);
    limiter.apply(PARTITION, std::slice::from_ref(&quota), Amounts::requests(5), NOW).await.expect("apply");
    let held_before = held(limiter).await;

    let both = [rate.clone(), quota.clone()];
    let decision = reserve(limiter, "conf-aon-1", &both, Amounts::ONE_REQUEST, NOW, true).await;
    assert!(!decision.allowed());
    let refusal = decision.refused.expect("refused");
    assert_eq!(refusal.index, 1, "the month quota refused, not the minute limit");
    assert_eq!(decision.statuses.len(), 2);
    assert_eq!(decision.statuses[0].spec, rate.spec);
    assert_eq!(decision.statuses[1].spec, quota.spec);
    assert_eq!(decision.statuses[0].used, 0, "statuses of a refusal exclude the request");
    assert_eq!((decision.statuses[1].used, decision.statuses[1].remaining), (5, 0));
    let (status, _) = decision.refused_status().expect("refused status");
    assert_eq!(status.spec, quota.spec);

    assert_eq!(used(limiter, &rate, NOW).await, 0, "the admitting limit was charged");
    assert_eq!(used(limiter, &quota, NOW).await, 5);
    assert_eq!(held(limiter).await, held_before, "a refusal holds nothing");
    settle(limiter, "conf-aon-1", Amounts::requests(3), NOW).await;
    assert_eq!(used(limiter, &rate, NOW).await, 0, "settling a refused request is a no-op");

    // Several refusing limits: the first one is named; one that can never fit has no
    // retry time.
    let closed = item("key:conf-aon", Metric::Requests, Window::Hour, 0);
    let decision =
        reserve(limiter, "conf-aon-2", &[rate.clone(), closed, quota], Amounts::ONE_REQUEST, NOW, true).await;
    let refusal = decision.refused.expect("refused");
    assert_eq!(refusal.index, 1);
    assert_eq!(refusal.retry_at_ms, None, "1 request never fits a limit of 0");
    assert_eq!(used(limiter, &rate, NOW).await, 0);
}

/// Every item appears in the statuses, in order, even when the request uses none of
/// its metric; its counter is untouched.
pub async fn zero_amount_limits_are_reported(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let requests = item("key:conf-zero", Metric::Requests, Window::Minute, 10);
    let tokens_limit = item("key:conf-zero", Metric::TotalTokens, Window::Day, 1_000);
    let cost = item("key:conf-zero", Metric::CostMicros, Window::Month, 5_000_000);
    let items = [requests.clone(), tokens_limit.clone(), cost];
    let decision = reserve(limiter, "conf-zero-1", &items, Amounts::ONE_REQUEST, NOW, false).await;
    assert!(decision.allowed());
    let seen: Vec<_> = decision.statuses.iter().map(|s| (s.spec.clone(), s.used, s.remaining)).collect();
    assert_eq!(
        seen,
        vec![(items[0].spec.clone(), 1, 9), (items[1].spec.clone(), 0, 1_000), (items[2].spec.clone(), 0, 5_000_000)]
    );
    assert_eq!(used(limiter, &tokens_limit, NOW).await, 0);
    assert_eq!(used(limiter, &requests, NOW).await, 1);
}

/// Settlement replaces the reservation by the actual amounts, once.
pub async fn settle_adjusts_once(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let requests = item("key:conf-settle", Metric::Requests, Window::Minute, 10);
    let total = item("key:conf-settle", Metric::TotalTokens, Window::Minute, 1_000);
    let items = [requests.clone(), total.clone()];
    let held_before = held(limiter).await;

    let reserved = Amounts { requests: 1, ..tokens(100, 0) };
    let decision = reserve(limiter, "conf-settle-1", &items, reserved, NOW, true).await;
    assert!(decision.allowed());
    assert_eq!(decision.statuses[1].used, 100);
    assert_eq!(decision.statuses[1].remaining, 900);
    assert_eq!(held(limiter).await, held_before + 1);

    let actual = Amounts { requests: 1, ..tokens(30, 10) };
    settle(limiter, "conf-settle-1", actual, NOW + 1_000).await;
    assert_eq!(used(limiter, &total, NOW + 1_000).await, 40, "settled down to the actual 40");
    assert_eq!(used(limiter, &requests, NOW + 1_000).await, 1);
    assert_eq!(held(limiter).await, held_before);

    settle(limiter, "conf-settle-1", tokens(500, 500), NOW + 2_000).await;
    assert_eq!(used(limiter, &total, NOW + 2_000).await, 40, "a second settle is a no-op");

    // Settling above the reservation charges the difference.
    let decision = reserve(limiter, "conf-settle-2", &items, tokens(10, 0), NOW + 3_000, true).await;
    assert!(decision.allowed());
    assert_eq!(used(limiter, &total, NOW + 3_000).await, 50);
    settle(limiter, "conf-settle-2", tokens(45, 15), NOW + 4_000).await;
    assert_eq!(used(limiter, &total, NOW + 4_000).await, 100);

    settle(limiter, "conf-settle-unknown", tokens(1, 1), NOW + 4_000).await;
    assert_eq!(used(limiter, &total, NOW + 4_000).await, 100, "an unknown id is a no-op");
}

/// Settling with zero refunds the whole reservation.
pub async fn settle_with_zero_refunds(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let minute = item("key:conf-refund", Metric::Requests, Window::Minute, 10);
    let month = item("key:conf-refund", Metric::Requests, Window::Month, 100);
    let items = [minute.clone(), month.clone()];
    let decision = reserve(limiter, "conf-refund-1", &items, Amounts::ONE_REQUEST, NOW, true).await;
    assert!(decision.allowed());
    assert_eq!(used(limiter, &minute, NOW).await, 1);
    settle(limiter, "conf-refund-1", Amounts::default(), NOW + 10).await;
    assert_eq!(used(limiter, &minute, NOW + 10).await, 0);
    assert_eq!(used(limiter, &month, NOW + 10).await, 0);
}

/// A reservation held for a long request (`hold_ms` beyond the old fixed ten
/// minutes) survives pruning until its hold runs out, so the settlement of a stream
/// that ran for half an hour still replaces the estimate by what was used.
pub async fn a_reservation_lives_as_long_as_its_hold(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let month = item("key:conf-long", Metric::TotalTokens, Window::Month, 100_000);
    let items = std::slice::from_ref(&month);
    let request = ReserveRequest {
        partition: PARTITION,
        request_id: "conf-long-1",
        items,
        amounts: tokens(1_000, 4_000),
        now_ms: NOW,
        hold: true,
        hold_ms: 3 * 60 * MS_PER_MINUTE,
    };
    assert!(limiter.reserve(request).await.expect("reserve").allowed());
    let later = NOW + 30 * MS_PER_MINUTE;
    // (Pruning may forget other scenarios' shorter holds: only this one is checked.)
    limiter.prune(later).await.expect("prune");
    assert!(held(limiter).await >= 1, "a reservation within its hold is kept");
    settle(limiter, "conf-long-1", tokens(1_000, 234), later).await;
    assert_eq!(used(limiter, &month, later).await, 1_234, "the late settlement replaced the estimate");
}

/// `hold: false` makes the charge final: nothing is held, and settle does nothing.
pub async fn reserve_without_hold_is_final(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let minute = item("key:conf-final", Metric::Requests, Window::Minute, 10);
    let held_before = held(limiter).await;
    let decision =
        reserve(limiter, "conf-final-1", std::slice::from_ref(&minute), Amounts::ONE_REQUEST, NOW, false).await;
    assert!(decision.allowed());
    assert_eq!(held(limiter).await, held_before);
    settle(limiter, "conf-final-1", Amounts::default(), NOW + 10).await;
    assert_eq!(used(limiter, &minute, NOW + 10).await, 1, "settle on a final charge is a no-op");
}

/// A reserve repeated with the id of a held reservation charges nothing more.
pub async fn repeated_reserve_does_not_double_charge(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let minute = item("key:conf-repeat", Metric::Requests, Window::Minute, 10);
    let items = std::slice::from_ref(&minute);
    let held_before = held(limiter).await;
    let first = reserve(limiter, "conf-repeat-1", items, Amounts::ONE_REQUEST, NOW, true).await;
    assert!(first.allowed());
    let again = reserve(limiter, "conf-repeat-1", items, Amounts::ONE_REQUEST, NOW + 5, true).await;
    assert!(again.allowed(), "a repeated reserve of a held reservation is admitted");
    assert_eq!(again.statuses.len(), 1);
    assert_eq!(again.statuses[0].used, 1);
    assert_eq!(used(limiter, &minute, NOW + 5).await, 1);
    assert_eq!(held(limiter).await, held_before + 1);
    settle(limiter, "conf-repeat-1", Amounts::ONE_REQUEST, NOW + 10).await;
    assert_eq!(used(limiter, &minute, NOW + 10).await, 1);
    assert_eq!(held(limiter).await, held_before);
}

/// Retry and reset times: within one window (plus one bucket of resolution) for a
/// sliding limit, at the next month's start for a month quota, and capacity really is
/// back at the retry time.
pub async fn retry_and_reset_times(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    // Resolution of a minute window: buckets of at most a second.
    let slack = 1_000;
    let minute = item("key:conf-retry", Metric::Requests, Window::Minute, 3);
    let items = std::slice::from_ref(&minute);
    for i in 0..3u64 {
        let id = format!("conf-retry-{i}");
        let decision = reserve(limiter, &id, items, Amounts::ONE_REQUEST, NOW, false).await;
        assert!(decision.allowed());
        let status = decision.statuses[0].clone();
        assert_eq!((status.used, status.remaining), (i + 1, 2 - i));
        assert!(
            status.reset_at_ms > NOW && status.reset_at_ms <= NOW + MS_PER_MINUTE + slack,
            "minute reset_at {} not within a window of {NOW}",
            status.reset_at_ms
        );
    }
    let later = NOW + 500;
    let decision = reserve(limiter, "conf-retry-x", items, Amounts::ONE_REQUEST, later, false).await;
    let refusal = decision.refused.expect("the fourth request is refused");
    assert_eq!(refusal.index, 0);
    let retry_at = refusal.retry_at_ms.expect("one request fits a limit of 3 eventually");
    assert!(
        retry_at > later && retry_at <= NOW + MS_PER_MINUTE + slack,
        "retry_at {retry_at} not within a window of {NOW}"
    );
    let at_retry = limiter.peek(PARTITION, items, Amounts::ONE_REQUEST, retry_at).await.expect("peek at retry");
    assert!(at_retry.allowed(), "capacity is back at retry_at: {at_retry:?}");

    let too_big = reserve(limiter, "conf-retry-big", items, Amounts::requests(4), retry_at, false).await;
    assert_eq!(too_big.refused.map(|r| r.retry_at_ms), Some(None), "4 never fits a limit of 3");

    let month = item("key:conf-retry", Metric::Requests, Window::Month, 2);
    let month_items = std::slice::from_ref(&month);
    let next_month = next_month_start(NOW);
    for i in 0..2 {
        let id = format!("conf-retry-month-{i}");
        let decision = reserve(limiter, &id, month_items, Amounts::ONE_REQUEST, NOW, false).await;
        assert!(decision.allowed());
        assert_eq!(decision.statuses[0].reset_at_ms, next_month, "a month quota resets on the 1st");
    }
    let decision = reserve(limiter, "conf-retry-month-x", month_items, Amounts::ONE_REQUEST, NOW, false).await;
    let refusal = decision.refused.expect("the month quota is spent");
    assert_eq!(refusal.retry_at_ms, Some(next_month));
    assert_eq!(decision.statuses[0].reset_at_ms, next_month);
    assert_eq!(used(limiter, &month, next_month - 1).await, 2);
    assert_eq!(used(limiter, &month, next_month).await, 0, "the quota resets at the month start");
}

/// Day and month windows follow the item's zone: a day in Kolkata (UTC+05:30) runs
/// from 18:30 UTC to 18:30 UTC, a month in Los Angeles starts at 07:00 or 08:00 UTC;
/// reserve, settle, apply and peek all agree on those bounds.
pub async fn calendar_windows_follow_the_zone(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let kolkata = tollgate_core::Zone::parse("Asia/Kolkata").expect("zone");
    let day = item("key:conf-zone", Metric::Requests, Window::Day, 2).in_zone(kolkata.clone());
    let items = std::slice::from_ref(&day);
    // NOW is 2023-11-14T22:13:20Z, 03:43 on the 15th in Kolkata.
    let (start, end) = kolkata.bounds(Window::Day, NOW);
    assert_eq!((start, end), (1_699_986_600_000, 1_700_073_000_000), "2023-11-14T18:30Z .. 2023-11-15T18:30Z");
    for i in 0..2 {
        let decision = reserve(limiter, &format!("conf-zone-{i}"), items, Amounts::ONE_REQUEST, NOW, false).await;
        assert!(decision.allowed());
        assert_eq!(decision.statuses[0].reset_at_ms, end, "the day resets at local midnight");
    }
    let refused = reserve(limiter, "conf-zone-x", items, Amounts::ONE_REQUEST, NOW, false).await;
    assert_eq!(refused.refused.map(|r| r.retry_at_ms), Some(Some(end)));
    let utc_midnight = tollgate_core::calendar::day_start(NOW) + MS_PER_DAY;
    assert_eq!(used(limiter, &day, utc_midnight + 1).await, 2, "UTC midnight is not Kolkata's");
    assert_eq!(used(limiter, &day, end - 1).await, 2);
    assert_eq!(used(limiter, &day, end).await, 0, "a new day at 18:30 UTC");

    // A usage event from before the local day began counts nowhere in it.
    limiter.apply(PARTITION, items, Amounts::requests(5), end - 1).await.expect("apply");
    assert_eq!(used(limiter, &day, end + 1).await, 0, "yesterday's (local) usage");
    limiter.apply(PARTITION, items, Amounts::requests(1), end + 1).await.expect("apply");
    assert_eq!(used(limiter, &day, end + 2).await, 1);

    // Settlement adjusts the zoned window it charged.
    let tokens_day = item("key:conf-zone", Metric::TotalTokens, Window::Day, 100).in_zone(kolkata);
    let decision =
        reserve(limiter, "conf-zone-held", std::slice::from_ref(&tokens_day), tokens(10, 30), end + 10, true).await;
    assert!(decision.allowed());
    settle(limiter, "conf-zone-held", tokens(10, 5), end + 20).await;
    assert_eq!(used(limiter, &tokens_day, end + 30).await, 15, "settled to what was used");

    let la = tollgate_core::Zone::parse("America/Los_Angeles").expect("zone");
    let month = item("key:conf-zone", Metric::Requests, Window::Month, 1).in_zone(la.clone());
    let (_, month_end) = la.bounds(Window::Month, NOW);
    assert_eq!(month_end, 1_701_417_600_000, "2023-12-01T08:00:00Z");
    let decision =
        reserve(limiter, "conf-zone-month", std::slice::from_ref(&month), Amounts::ONE_REQUEST, NOW, false).await;
    assert_eq!(decision.statuses[0].reset_at_ms, month_end);
    assert_eq!(used(limiter, &month, next_month_start(NOW) + 1).await, 1, "still November in Los Angeles");
    assert_eq!(used(limiter, &month, month_end).await, 0);
}

/// `apply` charges without checking, past the limit if need be.
pub async fn apply_charges_without_checking(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let minute = item("key:conf-apply", Metric::Requests, Window::Minute, 10);
    let day = item("key:conf-apply", Metric::TotalTokens, Window::Day, 100);
    let items = [minute.clone(), day.clone()];
    limiter.apply(PARTITION, &items, Amounts { requests: 25, ..tokens(30, 20) }, NOW).await.expect("apply");
    let peeked = limiter.peek(PARTITION, &items, Amounts::ONE_REQUEST, NOW).await.expect("peek");
    assert_eq!(peeked.statuses[0].used, 25);
    assert_eq!(peeked.statuses[0].remaining, 0);
    assert_eq!(peeked.statuses[1].used, 50);
    assert_eq!(peeked.refused.map(|r| r.index), Some(0), "peek refuses what would not fit");
    assert_eq!(used(limiter, &minute, NOW).await, 25, "peek charged nothing");

    let decision = reserve(limiter, "conf-apply-1", &items, Amounts::ONE_REQUEST, NOW, true).await;
    assert!(!decision.allowed());
    assert_eq!(used(limiter, &day, NOW).await, 50);
}

/// `prune` keeps counters that still count and drops idle ones: after pruning, an
/// idle counter reads as empty.
pub async fn prune_drops_idle_counters(limiter: Arc<dyn Limiter>) {
    let limiter = &*limiter;
    let minute = item("key:conf-prune", Metric::Requests, Window::Minute, 10);
    let day = item("key:conf-prune", Metric::Requests, Window::Day, 100);
    let items = [minute.clone(), day.clone()];
    let decision = reserve(limiter, "conf-prune-1", &items, Amounts::ONE_REQUEST, NOW, false).await;
    assert!(decision.allowed());

    // Other scenarios' counters may be idle already, so only what survives is checked.
    limiter.prune(NOW).await.expect("prune now");
    assert_eq!(used(limiter, &minute, NOW).await, 1);
    assert_eq!(used(limiter, &day, NOW).await, 1);

    let two_minutes = NOW + 2 * MS_PER_MINUTE;
    limiter.prune(two_minutes).await.expect("prune after a minute");
    assert_eq!(used(limiter, &minute, two_minutes).await, 0);
    assert_eq!(used(limiter, &day, two_minutes).await, 1, "the day counter still counts");

    let two_days = NOW + 2 * MS_PER_DAY;
    limiter.prune(two_days).await.expect("prune after a day");
    assert_eq!(used(limiter, &day, two_days).await, 0);
    let decision = reserve(limiter, "conf-prune-2", &items, Amounts::ONE_REQUEST, two_days, false).await;
    assert!(decision.allowed(), "a pruned subject starts afresh");
    assert_eq!(decision.statuses[0].used, 1);
}

/// When several limits refuse, the one that binds longest is reported: an exhausted
/// month quota, not the minute limit that would clear first.
pub async fn binding_refusal_is_reported(limiter: Arc<dyn Limiter>) {
    let rate = item("key:conf-binding", Metric::Requests, Window::Minute, 6);
    let quota = item("key:conf-binding", Metric::Requests, Window::Month, 8);
    let items = [rate, quota];
    let d = reserve(&*limiter, "conf-binding-1", &items, Amounts::requests(5), NOW, false).await;
    assert!(d.allowed());
    let d = reserve(&*limiter, "conf-binding-2", &items, Amounts::requests(4), NOW, false).await;
    let refusal = d.refused.expect("both limits refuse");
    assert_eq!(refusal.index, 1, "the month quota binds longer than the minute");
    let month_end = tollgate_core::calendar::next_month_start(NOW);
    assert_eq!(refusal.retry_at_ms, Some(month_end));
    // A request larger than a limit can never fit: that refusal wins over any wait.
    let d = reserve(&*limiter, "conf-binding-3", &items, Amounts::requests(9), NOW, false).await;
    assert_eq!(d.refused.map(|r| (r.index, r.retry_at_ms)), Some((0, None)));
}
