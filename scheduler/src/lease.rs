//! The enqueue loop's exclusive lease in Redis, with an owner token and a fencing token.
//!
//! Acquire: `SET key token NX PX ttl`, then `INCR` the fence counter. Renew: a script that
//! extends the TTL only while the key still holds our token. Release: a script that deletes it
//! only while it holds our token. A holder that could not renew before its local deadline treats
//! the lease as lost at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

const RENEW_SCRIPT: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";

/// Takes the next fencing token, above `ARGV[1]` (the highest token the database has seen): a
/// counter lost with a Redis restart can never hand out a token the database would refuse.
const NEXT_FENCE_SCRIPT: &str = r"
local fence = redis.call('incr', KEYS[1])
local floor = tonumber(ARGV[1])
if fence <= floor then
  fence = floor + 1
  redis.call('set', KEYS[1], fence)
end
return fence";

const RELEASE_SCRIPT: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0";

/// Deletes the lease only while its token starts with `ARGV[1]|` (the holder it names).
const CLEAR_IF_HOLDER_SCRIPT: &str = r"
local value = redis.call('get', KEYS[1])
if value and string.sub(value, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
  return redis.call('del', KEYS[1])
end
return 0";

/// The lease's Redis keys and timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Key of the lease.
    pub key: String,
    /// Key of the fencing counter.
    pub fence_key: String,
    /// Time to live; renewed every third of it.
    pub ttl: Duration,
    /// Who this replica is (host, process, address), shown as the holder.
    pub holder: String,
}

/// Who holds the lease, as any replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The holder's identity.
    pub holder: String,
    /// When it took the lease (milliseconds since the epoch).
    pub acquired_at_ms: u64,
    /// The latest fencing token handed out (the holder's).
    pub fence: u64,
    /// Milliseconds left before the lease expires unless renewed.
    pub ttl_left_ms: u64,
}

/// A held lease.
#[derive(Debug, Clone)]
pub struct HeldLease {
    /// Random owner token.
    pub token: String,
    /// Fencing token of this acquisition (strictly increasing across acquisitions).
    pub fence: u64,
    deadline: Arc<Mutex<Instant>>,
    lost: Arc<AtomicBool>,
}

impl HeldLease {
    /// Whether the lease is still ours: renewed in time and not reported lost.
    pub async fn is_valid(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && Instant::now() < *self.deadline.lock().await
    }
}

/// Acquires, renews and releases the lease.
#[derive(Clone)]
pub struct Lease {
    redis: ConnectionManager,
    config: LeaseConfig,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease over `redis`.
    pub fn new(redis: ConnectionManager, config: LeaseConfig) -> Self {
        Self { redis, config }
    }

    /// Tries once to take the lease. Its fencing token is above `fence_floor`, the highest token
    /// the scheduler database has accepted.
    pub async fn try_acquire(&self, fence_floor: u64) -> redis::RedisResult<Option<HeldLease>> {
        // holder|acquired-at|random: unique, and readable by any replica for `describe`.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let token = format!(
            "{}|{now_ms}|{:016x}",
            self.config.holder,
            rand::random::<u64>()
        );
        let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let started = Instant::now();
        let mut redis = self.redis.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.config.key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await?;
        if set.is_none() {
            return Ok(None);
        }
        let fence: u64 = Script::new(NEXT_FENCE_SCRIPT)
            .key(&self.config.fence_key)
            .arg(fence_floor)
            .invoke_async(&mut redis)
            .await?;
        Ok(Some(HeldLease {
            token,
            fence,
            deadline: Arc::new(Mutex::new(started + self.local_validity())),
            lost: Arc::new(AtomicBool::new(false)),
        }))
    }

    /// Who holds the lease now, if anyone.
    pub async fn describe(&self) -> redis::RedisResult<Option<LeaseInfo>> {
        let mut redis = self.redis.clone();
        let (value, ttl, fence): (Option<String>, i64, Option<u64>) = redis::pipe()
            .get(&self.config.key)
            .pttl(&self.config.key)
            .get(&self.config.fence_key)
            .query_async(&mut redis)
            .await?;
        Ok(value.map(|value| {
            let mut parts = value.rsplitn(3, '|');
            let _random = parts.next();
            let acquired_at_ms = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            LeaseInfo {
                holder: parts.next().unwrap_or_default().to_owned(),
                acquired_at_ms,
                fence: fence.unwrap_or(0),
                ttl_left_ms: u64::try_from(ttl).unwrap_or(0),
            }
        }))
    }

    /// Deletes the lease if `holder` holds it (an operator clearing a lease left by a killed
    /// holder); returns whether it did. The fencing counter stays: the next holder's token is
    /// higher, so a holder that was in fact alive cannot write once someone else takes over.
    pub async fn clear_if_holder(&self, holder: &str) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let deleted: i64 = Script::new(CLEAR_IF_HOLDER_SCRIPT)
            .key(&self.config.key)
            .arg(holder)
            .invoke_async(&mut redis)
            .await?;
        Ok(deleted == 1)
    }

    /// How long after a successful set or renewal the holder trusts the lease: the TTL less a
    /// safety margin for clock drift and the round trip.
    fn local_validity(&self) -> Duration {
        self.config.ttl.mul_f64(0.8)
    }

    /// Renews the lease; marks it lost if it is no longer ours.
    pub async fn renew(&self, held: &HeldLease) -> redis::RedisResult<bool> {
        let started = Instant::now();
        let ttl_ms = u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        let renewed: i64 = Script::new(RENEW_SCRIPT)
            .key(&self.config.key)
            .arg(&held.token)
            .arg(ttl_ms)
            .invoke_async(&mut redis)
            .await?;
        if renewed == 1 {
            *held.deadline.lock().await = started + self.local_validity();
            Ok(true)
        } else {
            held.lost.store(true, Ordering::SeqCst);
            Ok(false)
        }
    }

    /// Gives the lease up if it is still ours.
    pub async fn release(&self, held: &HeldLease) -> redis::RedisResult<()> {
        held.lost.store(true, Ordering::SeqCst);
        let mut redis = self.redis.clone();
        let _: i64 = Script::new(RELEASE_SCRIPT)
            .key(&self.config.key)
            .arg(&held.token)
            .invoke_async(&mut redis)
            .await?;
        Ok(())
    }

    /// Keeps renewing every third of the TTL until the lease is lost or released.
    pub async fn keep_renewed(&self, held: HeldLease) {
        let period = self.config.ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            if held.lost.load(Ordering::SeqCst) {
                return;
            }
            match self.renew(&held).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(fence = held.fence, "enqueue lease lost to another holder");
                    return;
                }
                Err(error) => tracing::warn!(%error, "renewing the enqueue lease failed; retrying"),
            }
        }
    }
}
