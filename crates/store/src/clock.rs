//! The one place the wall clock is read. Everything below takes `now` in Unix
//! milliseconds (UTC) as an argument, so tests and replays can pass their own.

/// Milliseconds since the Unix epoch, from the system clock (UTC).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
