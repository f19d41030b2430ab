//! A brake on key guessing: anyone can mint well-formed keys (the checksum is not a
//! secret), and every unknown one costs a store lookup (a PostgreSQL query in
//! distributed mode). Past `limits.invalid_keys_per_minute` unknown keys from one
//! client address in a minute, that address gets 429 `too_many_invalid_keys` for the
//! rest of the minute, before any lookup. IPv6 addresses count per /64, the block a
//! single client usually holds. Memory is bounded: the table is swept of past
//! minutes when it grows, and never holds more than [`MAX_ADDRESSES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

use tollgate_core::calendar::MS_PER_MINUTE;

/// Client addresses tracked at most; beyond, the oldest minute's entries are dropped.
pub const MAX_ADDRESSES: usize = 100_000;

/// An address as the guard counts it: IPv4 whole, IPv6 by its /64.
fn bucket_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

pub struct InvalidKeyGuard {
    per_minute: u32,
    /// Address → (minute start, unknown keys in it).
    seen: Mutex<HashMap<IpAddr, (i64, u32)>>,
    /// The last minute in which some address reached the limit: every other minute
    /// `blocked` answers without taking the lock, so the guard costs the proxy path
    /// one atomic load.
    braked_minute: AtomicI64,
}

impl InvalidKeyGuard {
    /// `per_minute = 0` turns the guard off.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, seen: Mutex::new(HashMap::new()), braked_minute: AtomicI64::new(i64::MIN) }
    }

    /// Seconds the address must wait, or `None` if it may try a key.
    pub fn blocked(&self, ip: Option<IpAddr>, now_ms: i64) -> Option<u64> {
        let ip = ip.filter(|_| self.per_minute > 0)?;
        let minute = now_ms - now_ms.rem_euclid(MS_PER_MINUTE);
        if self.braked_minute.load(Ordering::Relaxed) != minute {
            return None;
        }
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(&bucket_of(ip)) {
            Some((start, count)) if *start == minute && *count >= self.per_minute => {
                Some(((minute + MS_PER_MINUTE - now_ms) as u64).div_ceil(1000).max(1))
            }
            _ => None,
        }
    }

    /// Counts an unknown or malformed key from the address.
    pub fn failed(&self, ip: Option<IpAddr>, now_ms: i64) {
        let Some(ip) = ip.filter(|_| self.per_minute > 0) else { return };
        let minute = now_ms - now_ms.rem_euclid(MS_PER_MINUTE);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= MAX_ADDRESSES {
            seen.retain(|_, (start, _)| *start == minute);
            if seen.len() >= MAX_ADDRESSES {
                seen.clear();
            }
        }
        let entry = seen.entry(bucket_of(ip)).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 >= self.per_minute {
            self.braked_minute.store(minute, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_braked_past_the_limit_until_the_minute_ends() {
        let guard = InvalidKeyGuard::new(3);
        let ip: Option<IpAddr> = "203.0.113.7".parse().ok();
        let now = 10 * MS_PER_MINUTE + 15_000;
        for _ in 0..3 {
            assert_eq!(guard.blocked(ip, now), None);
            guard.failed(ip, now);
        }
        assert_eq!(guard.blocked(ip, now), Some(45));
        assert_eq!(guard.blocked("203.0.113.8".parse().ok(), now), None, "another address is not braked");
        assert_eq!(guard.blocked(ip, 11 * MS_PER_MINUTE), None, "a new minute starts afresh");
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_zero_turns_it_off() {
        let guard = InvalidKeyGuard::new(1);
        guard.failed("2001:db8:1:2::1".parse().ok(), 0);
        assert!(guard.blocked("2001:db8:1:2:ffff::9".parse().ok(), 0).is_some(), "same /64");
        assert!(guard.blocked("2001:db8:1:3::1".parse().ok(), 0).is_none(), "another /64");
        let off = InvalidKeyGuard::new(0);
        off.failed("198.51.100.1".parse().ok(), 0);
        assert_eq!(off.blocked("198.51.100.1".parse().ok(), 0), None);
    }
}
