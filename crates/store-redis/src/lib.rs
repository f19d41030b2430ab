//! The Redis half of tollgate's distributed backend.
//!
//! - [`RedisLimiter`] ([`Limiter`](tollgate_store::Limiter)): every limit of a request
//!   is checked and, only if all fit, charged by one Lua script in one round trip
//!   (`EVALSHA`, reloaded on `NOSCRIPT`); settlement is a second script. The scripts
//!   implement exactly the arithmetic of `tollgate_core::counter` (sliding windows of
//!   60 buckets plus the current one, UTC calendar day and month counters keyed by
//!   their start) and read the time from Redis (`TIME`), so instances with skewed
//!   clocks still agree.
//! - [`ChangeBus`]: catalog change notices over Redis pub/sub, so every instance drops
//!   its cached copy of a key or plan within milliseconds of a change.
//!
//! Key layout (all of one project share the hash tag `{<project>}`, so one script
//! touches one Redis Cluster slot):
//!
//! ```text
//! <prefix>{<project>}:c:<subject>|<metric>|<window>|<provider>|<model>|<endpoint>      sliding: hash bucket -> amount
//! <prefix>{<project>}:c:<subject>|<metric>|<window>|...:<window start ms>              calendar: integer
//! <prefix>{<project>}:r:<request id>                                                   held reservation: list
//! <prefix>catalog-changes                                                              pub/sub channel
//! <prefix>cache:<sha-256 hex>                                                          response cache entry (PX ttl)
//! ```
//!
//! Every key expires on its own when its window ends (`PEXPIRE`); held reservations
//! expire when their hold runs out (`ReserveRequest::hold_ms`, derived from the
//! request's total deadline), their charge staying as reserved. Redis is not
//! the system of record: the server's counter rebuild job raises day and month
//! counters to what the PostgreSQL ledger holds ([`RedisLimiter::raise_calendar_counters`]).

mod bus;
mod cache;
mod keys;
mod lease;
mod limiter;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use tollgate_store::{StoreError, StoreResult};

pub use bus::{BusEvent, ChangeBus};
pub use cache::RedisCache;
pub use keys::KeySpace;
pub use lease::Lease;
pub use limiter::{CalendarTarget, RESERVATION_TTL_MS, RedisLimiter};

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://`); with `cluster`, a comma-separated list
    /// of seed nodes.
    pub url: String,
    /// Talk to a Redis Cluster instead of a single server.
    pub cluster: bool,
    /// Longest wait for one command (and for one connection attempt).
    pub timeout: Duration,
}

/// A connection to a single Redis server (reconnecting by itself) or to a cluster.
/// Cheap to clone: clones share the multiplexed connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    /// Opens a connection. A single server is connected lazily (this returns at once
    /// even when Redis is down, and commands fail with `Unavailable` until it is
    /// back); a cluster needs one reachable seed node within `settings.timeout`.
    pub async fn connect(settings: &RedisSettings) -> StoreResult<Self> {
        if settings.cluster {
            let nodes: Vec<&str> = settings.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .build()
                .map_err(|e| StoreError::internal(format!("redis cluster settings: {e}")))?;
            let conn = tokio::time::timeout(settings.timeout * 4, client.get_async_connection())
                .await
                .map_err(|_| StoreError::unavailable("redis cluster: no seed node answered in time".to_owned()))?
                .map_err(redis_error)?;
            return Ok(RedisConn::Cluster(conn));
        }
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|e| StoreError::internal(format!("redis url: {e}")))?;
        // Bounded everything: `ConnectionManager::new` would otherwise retry forever
        // with no server. A command issued while Redis is down fails after the
        // connection timeout and triggers a fresh reconnect on the next one.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(settings.timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(redis_error)?;
        Ok(RedisConn::Single(manager))
    }

    /// `PING`, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> StoreResult<()> {
        let mut conn = self.clone();
        let reply: String = bounded(timeout, redis::cmd("PING").query_async(&mut conn)).await?;
        if reply == "PONG" { Ok(()) } else { Err(StoreError::internal(format!("redis answered PING with {reply:?}"))) }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Runs a Redis call with a deadline; a call past it is `Unavailable`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(redis_error),
        Err(_) => Err(StoreError::unavailable(format!("redis did not answer within {} ms", timeout.as_millis()))),
    }
}

/// Maps a Redis error: anything a retry (or Redis coming back) may cure is
/// `Unavailable`; a script or type error is a bug (`Internal`).
pub fn redis_error(error: RedisError) -> StoreError {
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                )
        );
    if transient {
        StoreError::unavailable(format!("redis: {error}"))
    } else {
        StoreError::internal(format!("redis: {error}"))
    }
}
