//! The storage request governor: one request budget per bucket, shared by every process of a
//! deployment through Redis, so that horizontally scaled importers together stay within what the
//! provider allows instead of each backing off on its own.
//!
//! Two budgets, reads (list, stat, read, open_read) and writes (copy), each a GCRA limiter in one
//! Lua script: a request reserves the next slot of a schedule spaced `1/rate` apart (with a small
//! burst) and waits for it. The rate follows three rules, all evaluated in the script from the
//! budget's shared state:
//!
//! - **Ramp.** It starts at the configured rate and at most doubles every ramp period (GCS's
//!   guidance for a new prefix: double every 20 minutes), up to an optional ceiling. A budget idle
//!   longer than a ramp period ramps again from the start.
//! - **Back off.** A `429` answer cuts the rate by 30 %, down to a sixteenth of the configured
//!   rate. Requests already booked at the old rate (at most half a second ahead) still meet
//!   429s, so one cut counts for every 429 of the next 750 ms.
//! - **Grow back.** While no 429 comes, the rate climbs back to the ramp's ceiling, by 10 % of it
//!   per second.
//!
//! When Redis cannot be reached the governor lets requests through (and logs it): the provider's
//! own 429s, which the retry layer backs off from, still protect the bucket.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    BlobStore, CopyOutcome, ListOptions, ListPage, ObjectMeta, ObjectReader, Operation,
    StorageError,
};
use crate::config::ConfigCheck;
use crate::ids::Digest;

/// The two budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// list, stat, read, open_read.
    Read,
    /// copy (a server-side rewrite on GCS, a write on disk).
    Write,
}

impl Budget {
    /// The label used in keys and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// Flags of the governor, shared by the binaries that touch the bucket.
#[derive(Debug, Clone, clap::Args)]
pub struct GovernorArgs {
    /// Storage reads (list, stat, read) per second that all processes of this deployment share
    /// at first; 0 leaves reads ungoverned. Needs FERRY_REDIS_URL.
    #[arg(long, env = "FERRY_STORAGE_READ_RATE", default_value = "0")]
    pub storage_read_rate: String,
    /// Storage writes (copies) per second shared at first; 0 leaves writes ungoverned.
    #[arg(long, env = "FERRY_STORAGE_WRITE_RATE", default_value = "0")]
    pub storage_write_rate: String,
    /// The most reads per second the ramp reaches; 0 = no ceiling.
    #[arg(long, env = "FERRY_STORAGE_MAX_READ_RATE", default_value = "0")]
    pub storage_max_read_rate: String,
    /// The most writes per second the ramp reaches; 0 = no ceiling.
    #[arg(long, env = "FERRY_STORAGE_MAX_WRITE_RATE", default_value = "0")]
    pub storage_max_write_rate: String,
    /// Seconds in which the governed rates may at most double (GCS: 20 minutes).
    #[arg(long, env = "FERRY_STORAGE_RAMP_SECS", default_value = "1200")]
    pub storage_ramp_secs: String,
}

impl Default for GovernorArgs {
    fn default() -> Self {
        Self {
            storage_read_rate: "0".into(),
            storage_write_rate: "0".into(),
            storage_max_read_rate: "0".into(),
            storage_max_write_rate: "0".into(),
            storage_ramp_secs: "1200".into(),
        }
    }
}

/// One budget's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Requests per second at first.
    pub rate: f64,
    /// The ramp's ceiling (0 = none).
    pub max_rate: f64,
}

/// Validated governor settings: `None` budgets are not governed.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    /// The read budget.
    pub read: Option<BudgetConfig>,
    /// The write budget.
    pub write: Option<BudgetConfig>,
    /// Time in which a rate may at most double.
    pub ramp: Duration,
}

impl Default for GovernorConfig {
    /// Nothing governed.
    fn default() -> Self {
        Self {
            read: None,
            write: None,
            ramp: Duration::from_secs(1200),
        }
    }
}

impl GovernorConfig {
    /// Whether any budget is governed.
    pub fn enabled(&self) -> bool {
        self.read.is_some() || self.write.is_some()
    }
}

fn parse_rate(check: &mut ConfigCheck, key: &str, value: &str) -> f64 {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => rate,
        _ => {
            check.problem(
                key,
                format!("{value:?} is not a rate (requests per second, >= 0)"),
            );
            0.0
        }
    }
}

impl GovernorArgs {
    /// Checks the flags; `redis_configured` says whether a Redis URL is set (the budgets live
    /// there).
    pub fn validate(&self, check: &mut ConfigCheck, redis_configured: bool) -> GovernorConfig {
        let budget = |check: &mut ConfigCheck, keys: [&str; 2], values: [&str; 2]| {
            let rate = parse_rate(check, keys[0], values[0]);
            let max_rate = parse_rate(check, keys[1], values[1]);
            if max_rate > 0.0 && max_rate < rate {
                check.problem(keys[1], format!("is below {} ({rate})", keys[0]));
            }
            (rate > 0.0).then_some(BudgetConfig { rate, max_rate })
        };
        let read = budget(
            check,
            ["FERRY_STORAGE_READ_RATE", "FERRY_STORAGE_MAX_READ_RATE"],
            [&self.storage_read_rate, &self.storage_max_read_rate],
        );
        let write = budget(
            check,
            ["FERRY_STORAGE_WRITE_RATE", "FERRY_STORAGE_MAX_WRITE_RATE"],
            [&self.storage_write_rate, &self.storage_max_write_rate],
        );
        let ramp = check
            .positive("FERRY_STORAGE_RAMP_SECS", &self.storage_ramp_secs)
            .map_or(Duration::from_secs(1200), Duration::from_secs);
        let config = GovernorConfig { read, write, ramp };
        if config.enabled() && !redis_configured {
            check.problem(
                "FERRY_REDIS_URL",
                "is required when FERRY_STORAGE_READ_RATE or FERRY_STORAGE_WRITE_RATE is set \
                 (the budget is shared through Redis)",
            );
        }
        config
    }
}

/// Reserves the next `ARGV[8]` slots of a budget (`take`), cuts its rate after a 429 (`cut`),
/// or reads it (`peek`: the wait one more request would face). Times are Redis's own (`TIME`), so every process agrees on them. Returns
/// `{done, wait_ms, rate, ceiling}` (done: a slot reserved, or the rate cut), numbers as
/// strings since Redis would truncate Lua floats to integers.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local base = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local ramp = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5])
local h = redis.call('HMGET', KEYS[1], 'tat', 'start', 'last', 'cut_rate', 'cut_at')
local tat = tonumber(h[1]) or now
local start = tonumber(h[2]) or now
local last = tonumber(h[3]) or now
if now - last > ramp then
  start = now
  tat = now
end
local ceiling = base * 2 ^ ((now - start) / ramp)
if max > 0 and ceiling > max then ceiling = max end
local rate = ceiling
local cut_rate = tonumber(h[4])
local cut_at = tonumber(h[5])
if cut_rate and cut_at then
  rate = math.min(ceiling, cut_rate + ceiling * 0.1 * (now - cut_at) / 1000)
end
if ARGV[6] == 'cut' then
  if not cut_at or now - cut_at > tonumber(ARGV[7]) then
    rate = math.max(base / 16, rate * 0.7)
    redis.call('HSET', KEYS[1], 'cut_rate', tostring(rate), 'cut_at', tostring(now))
    redis.call('PEXPIRE', KEYS[1], math.floor(ramp * 2))
    return {1, '0', tostring(rate), tostring(ceiling)}
  end
  return {0, '0', tostring(rate), tostring(ceiling)}
end
local interval = 1000 / rate
if tat < now then tat = now end
if ARGV[6] == 'peek' then
  local next_wait = tat - interval * (burst - 1) - now
  if next_wait < 0 then next_wait = 0 end
  return {0, tostring(next_wait), tostring(rate), tostring(ceiling)}
end
local slots = tonumber(ARGV[8])
local wait = tat + interval * (slots - 1) - interval * (burst - 1) - now
if wait > max_wait then
  return {0, tostring(wait), tostring(rate), tostring(ceiling)}
end
redis.call('HSET', KEYS[1], 'tat', tostring(tat + interval * slots), 'start', tostring(start),
  'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.floor(ramp * 2))
if wait < 0 then wait = 0 end
return {1, tostring(wait), tostring(rate), tostring(ceiling)}
";

/// The longest wait a request reserves; a longer queue makes it wait that long and ask again,
/// so that few slots are booked at a rate that a 429 may cut.
const MAX_RESERVED_WAIT: Duration = Duration::from_millis(500);

/// After a cut, further 429s within this time count as the same overload (they were booked or
/// in flight before the cut).
const CUT_COOLDOWN: Duration = Duration::from_millis(750);

/// Requests a budget lets through at once beyond its rate, as a share of one second's worth.
const BURST_SECONDS: f64 = 0.05;

/// The shared budgets of one deployment.
#[derive(Clone)]
pub struct Governor {
    redis: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    keys: [String; 2],
    config: GovernorConfig,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the script answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// Whether a slot was reserved (else the caller waits and asks again); for a cut, whether
    /// the rate was cut (else a cut moments ago already counted this burst of 429s).
    pub reserved: bool,
    /// How long to wait.
    pub wait: Duration,
    /// The budget's rate now, requests per second.
    pub rate: f64,
    /// The ramp's ceiling now.
    pub ceiling: f64,
}

impl Governor {
    /// Budgets under `<prefix>:storage:budget:{read,write}` in the Redis of `redis`.
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, config: GovernorConfig) -> Self {
        Self {
            redis,
            script: Arc::new(redis::Script::new(SCRIPT)),
            keys: [
                format!("{prefix}:storage:budget:read"),
                format!("{prefix}:storage:budget:write"),
            ],
            config,
        }
    }

    fn budget(&self, budget: Budget) -> Option<(&str, BudgetConfig)> {
        match budget {
            Budget::Read => self.config.read.map(|c| (self.keys[0].as_str(), c)),
            Budget::Write => self.config.write.map(|c| (self.keys[1].as_str(), c)),
        }
    }

    async fn call(
        &self,
        budget: Budget,
        mode: &str,
        slots: u32,
    ) -> redis::RedisResult<Option<Slot>> {
        let Some((key, config)) = self.budget(budget) else {
            return Ok(None);
        };
        let burst = (config.rate * BURST_SECONDS).max(1.0);
        let (reserved, wait, rate, ceiling): (i64, String, String, String) = self
            .script
            .key(key)
            .arg(config.rate)
            .arg(config.max_rate)
            .arg(self.config.ramp.as_secs_f64() * 1000.0)
            .arg(burst)
            .arg(MAX_RESERVED_WAIT.as_secs_f64() * 1000.0)
            .arg(mode)
            .arg(CUT_COOLDOWN.as_secs_f64() * 1000.0)
            .arg(slots)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let number = |s: &str| s.parse::<f64>().unwrap_or(0.0);
        let slot = Slot {
            reserved: reserved == 1,
            wait: Duration::from_secs_f64((number(&wait) / 1000.0).clamp(0.0, 60.0)),
            rate: number(&rate),
            ceiling: number(&ceiling),
        };
        crate::metrics::STORAGE.budget(budget.as_str(), slot.rate, slot.ceiling);
        Ok(Some(slot))
    }

    /// Waits until the budget allows one more request. Returns at once for an ungoverned
    /// budget, and when Redis fails (logged).
    pub async fn acquire(&self, budget: Budget) {
        self.acquire_slots(budget, 1).await;
    }

    /// Waits until the budget allows `slots` more requests (one call that makes several), booked
    /// in one round trip to Redis.
    pub async fn acquire_slots(&self, budget: Budget, slots: u32) {
        if slots == 0 {
            return;
        }
        let started = std::time::Instant::now();
        loop {
            match self.call(budget, "take", slots).await {
                Ok(None) => return,
                Ok(Some(slot)) => {
                    if slot.reserved {
                        tokio::time::sleep(slot.wait).await;
                        crate::metrics::STORAGE
                            .budget_wait(budget.as_str(), started.elapsed().as_secs_f64());
                        return;
                    }
                    tokio::time::sleep(slot.wait.min(MAX_RESERVED_WAIT)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, budget = budget.as_str(), "storage budget unavailable; request not paced");
                    return;
                }
            }
        }
    }

    /// Reports a 429: cuts the budget's rate (once per cooldown at most).
    pub async fn throttled(&self, budget: Budget) {
        match self.call(budget, "cut", 0).await {
            Ok(Some(slot)) if slot.reserved => {
                crate::metrics::STORAGE.budget_cut(budget.as_str());
                tracing::info!(
                    budget = budget.as_str(),
                    rate = slot.rate,
                    "storage answered 429; budget rate cut"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "storage budget unavailable; 429 not recorded"),
        }
    }

    /// The budget's rate and ceiling now, and in `wait` how long one more request would wait,
    /// without taking a slot.
    pub async fn peek(&self, budget: Budget) -> redis::RedisResult<Option<Slot>> {
        self.call(budget, "peek", 0).await
    }
}

/// A store whose requests draw from the governor's budgets.
#[derive(Debug)]
pub struct Governed {
    inner: Arc<dyn BlobStore>,
    governor: Governor,
}

impl Governed {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn BlobStore>, governor: Governor) -> Self {
        Self { inner, governor }
    }

    /// Takes `reads` and `writes` slots, runs `call`, and cuts the budgets it drew from if the
    /// provider answered 429 (which of its requests did is not known).
    async fn run<T>(
        &self,
        (reads, writes): (u32, u32),
        call: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        self.governor.acquire_slots(Budget::Read, reads).await;
        self.governor.acquire_slots(Budget::Write, writes).await;
        let result = call.await;
        if let Err(StorageError::Backend {
            status: Some(429), ..
        }) = &result
        {
            if reads > 0 {
                self.governor.throttled(Budget::Read).await;
            }
            if writes > 0 {
                self.governor.throttled(Budget::Write).await;
            }
        }
        result
    }
}

#[async_trait]
impl BlobStore for Governed {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        let cost = self.inner.requests(Operation::List);
        self.run(cost, self.inner.list(prefix, options)).await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let cost = self.inner.requests(Operation::Stat);
        self.run(cost, self.inner.stat(key)).await
    }

    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        let cost = self.inner.requests(Operation::Read);
        self.run(cost, self.inner.read(key, max_bytes)).await
    }

    /// Books the open from the read budget, like [`BlobStore::read`]: the bytes come in the same
    /// request, however long the caller takes to pull them.
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        let cost = self.inner.requests(Operation::OpenRead);
        self.run(cost, self.inner.open_read(key)).await
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        // A write, even when the destination exists: the store still makes the request (on
        // GCS the rewrite its precondition refuses).
        let cost = self.inner.requests(Operation::Copy);
        self.run(cost, self.inner.copy(src, dst, expected)).await
    }

    /// Books a write.
    async fn delete(&self, key: &str, version: &str) -> Result<super::DeleteOutcome, StorageError> {
        let cost = self.inner.requests(Operation::Delete);
        self.run(cost, self.inner.delete(key, version)).await
    }

    async fn persist(&self) -> Result<(), StorageError> {
        self.inner.persist().await
    }

    fn requests(&self, operation: super::Operation) -> (u32, u32) {
        self.inner.requests(operation)
    }

    fn url(&self) -> String {
        self.inner.url()
    }
}

/// The governor's settings and where its budgets live.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSettings {
    /// Rates and ramp.
    pub config: GovernorConfig,
    /// Redis holding the budgets (required when a budget is governed).
    pub redis_url: Option<String>,
    /// Prefix of the budgets' keys.
    pub redis_prefix: String,
}

impl Default for BudgetSettings {
    /// Nothing governed.
    fn default() -> Self {
        Self {
            config: GovernorConfig::default(),
            redis_url: None,
            redis_prefix: "ferry".into(),
        }
    }
}

impl BudgetSettings {
    /// The governor, when a budget is governed: connects to Redis.
    pub async fn governor(&self) -> redis::RedisResult<Option<Governor>> {
        let Some(url) = self.redis_url.as_deref().filter(|_| self.config.enabled()) else {
            return Ok(None);
        };
        let client = redis::Client::open(url)?;
        let redis = crate::startup::with_retries("connecting to Redis for the budgets", || {
            redis::aio::ConnectionManager::new(client.clone())
        })
        .await?;
        Ok(Some(Governor::new(
            redis,
            &self.redis_prefix,
            self.config.clone(),
        )))
    }
}
