//! Enqueue triggers and wake-ups: how any replica asks the lease holder for a pass.

use std::time::Duration;

use futures::StreamExt;

/// Enqueue triggers, deduplicated across replicas. A trigger sets `<prefix>:enqueuer:pending`
/// (value: who triggered) with a short TTL and publishes a wake-up only if it set it; further
/// triggers collapse into that pending run until the loop consumes the key at the start of a
/// pass. The key can never outlive one TTL: a trigger that finds it without a TTL, or with a
/// longer one (left by a crashed run or by hand), cuts it back. The loop's timer runs passes
/// whatever the key says.
#[derive(Clone)]
pub struct Triggers {
    redis: redis::aio::ConnectionManager,
    pending_key: String,
    channel: String,
    owner: String,
    ttl: Duration,
    sent: prometheus_client::metrics::counter::Counter,
    deduplicated: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("pending_key", &self.pending_key)
            .finish_non_exhaustive()
    }
}

const TRIGGER_SCRIPT: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 or ttl > tonumber(ARGV[2]) then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0";

impl Triggers {
    /// Triggers under `prefix`, published on `channel`, owned by `owner`, pending at most `ttl`.
    pub fn new(
        redis: redis::aio::ConnectionManager,
        prefix: &str,
        channel: String,
        owner: String,
        ttl: Duration,
    ) -> Self {
        Self {
            redis,
            pending_key: format!("{prefix}:enqueuer:pending"),
            channel,
            owner,
            ttl,
            sent: prometheus_client::metrics::counter::Counter::default(),
            deduplicated: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    /// The triggers, counting every trigger in `sent` and the ones that collapsed into a
    /// pending one in `deduplicated` (registered metrics).
    pub fn with_counters(
        self,
        sent: prometheus_client::metrics::counter::Counter,
        deduplicated: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            sent,
            deduplicated,
            ..self
        }
    }

    /// Asks the lease holder, wherever it runs, for a pass. Returns false when the trigger
    /// collapsed into a pending one.
    pub async fn trigger(&self) -> redis::RedisResult<bool> {
        self.sent.inc();
        let mut redis = self.redis.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let set: i64 = redis::Script::new(TRIGGER_SCRIPT)
            .key(&self.pending_key)
            .arg(&self.owner)
            .arg(ttl_ms)
            .invoke_async(&mut redis)
            .await?;
        if set == 1 {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(&self.owner)
                .query_async(&mut redis)
                .await?;
            Ok(true)
        } else {
            self.deduplicated.inc();
            Ok(false)
        }
    }

    /// Consumes the pending trigger (the pass it asked for is starting).
    pub async fn consume(&self) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let _: i64 = redis::cmd("DEL")
            .arg(&self.pending_key)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// The pending trigger: who set it and its time to live, if one is pending.
    pub async fn pending(&self) -> redis::RedisResult<Option<(String, u64)>> {
        let mut redis = self.redis.clone();
        let (owner, ttl): (Option<String>, i64) = redis::pipe()
            .get(&self.pending_key)
            .pttl(&self.pending_key)
            .query_async(&mut redis)
            .await?;
        Ok(owner.map(|owner| (owner, u64::try_from(ttl).unwrap_or(0))))
    }

    /// Triggers that collapsed into a pending one (for metrics).
    pub fn deduplicated(&self) -> u64 {
        self.deduplicated.get()
    }
}

/// Forwards Redis pub/sub wake-ups on `channel` to the enqueuer until the connection ends,
/// then reconnects.
pub async fn forward_wakeups(
    client: redis::Client,
    channel: String,
    enqueuer: super::EnqueueHandle,
) {
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if let Err(error) = pubsub.subscribe(&channel).await {
                    tracing::warn!(%error, "subscribing to wake-ups failed");
                } else {
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        enqueuer.wake();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "connecting for wake-ups failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
