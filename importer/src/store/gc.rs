//! What `ferryctl gc` and the steps agree on in the metadata database: which copies under
//! `gitlab/` are registered or claimed, and the per-digest advisory lock that makes a removal and
//! a step's reliance on an unregistered copy mutually exclusive (docs/operations.md, "Removing
//! abandoned copies").
//!
//! * A step that finds a blob's destination already present, the blob not registered as copied,
//!   claims it ([`MetadataStore::claim_blob`]): one short transaction that takes the shared form
//!   of the digest's lock and writes `blob_claims`. It then looks at the object again.
//! * gc removes a copy only inside [`MetadataStore::lock_for_removal`]'s transaction, which takes
//!   the exclusive form of the same lock and re-checks that the digest is neither registered nor
//!   claimed within the window; the transaction (and the lock) ends after the removal.
//!
//! So a claim either commits before gc takes the lock (gc then sees it and keeps the copy), or
//! waits until gc's removal is over (the step's second look then finds the copy gone and copies
//! it anew).

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{Postgres, Transaction};

use super::MetadataStore;

/// The first key of the blob advisory locks, `pg_advisory_xact_lock(class, hashtext(digest))`:
/// the two-key form, whose key space is apart from the one-key form's (sqlx's migration lock).
/// Two digests with the same hash only share a lock, which serializes them and nothing more.
const BLOB_LOCK_CLASS: i32 = 20_261_207;

/// Why a copy is not removed, as far as the metadata database says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// The digest is registered in `blobs`.
    Registered,
    /// A step claimed the copy within the window.
    Claimed,
}

/// A removal in progress: holds the digest's exclusive advisory lock until [`Self::finish`]
/// (or until dropped, which rolls back and releases it).
#[derive(Debug)]
pub struct BlobRemoval {
    tx: Transaction<'static, Postgres>,
}

impl BlobRemoval {
    /// Ends the removal's transaction, releasing the lock. Call it once the storage request is
    /// over, whatever its answer.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// What [`MetadataStore::lock_for_removal`] found.
#[derive(Debug)]
pub enum RemovalCheck {
    /// Protected after all: keep it (nothing is held).
    Protected(Protection),
    /// Neither registered nor claimed, and locked: remove it, then [`BlobRemoval::finish`].
    Clear(BlobRemoval),
}

fn seconds(window: Duration) -> f64 {
    window.as_secs_f64()
}

impl MetadataStore {
    /// Records that a step relies on the copy of `digest` it found in place, in a transaction of
    /// its own under the shared form of the digest's lock: it waits for a removal of that copy
    /// in progress to end, and no removal starts until it has committed. Claiming again
    /// refreshes the claim.
    #[tracing::instrument(name = "db.claim_blob", skip_all, err(level = "warn"))]
    pub async fn claim_blob(&self, digest: &str) -> Result<(), sqlx::Error> {
        let (pool, digest) = (self.pool.clone(), digest.to_owned());
        // In a task of its own, which the caller's cancellation cannot cut short: a step drops
        // its other copies when one fails, and a transaction dropped halfway (its `BEGIN` sent,
        // the answer not read) would go back to the pool open, taking in the next statement
        // made on that connection.
        let claim = tokio::spawn(async move {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
                .bind(BLOB_LOCK_CLASS)
                .bind(&digest)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO blob_claims (digest, claimed_at) VALUES ($1, now()) \
                 ON CONFLICT (digest) DO UPDATE SET claimed_at = now()",
            )
            .bind(&digest)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        });
        claim.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// Which of `digests` are protected: registered, or claimed less than `window` ago. One
    /// statement, without locks (a first sort; each removal checks again under its lock).
    #[tracing::instrument(name = "db.blob_protections", skip_all, err(level = "warn"))]
    pub async fn blob_protections(
        &self,
        digests: &[&str],
        window: Duration,
    ) -> Result<HashMap<String, Protection>, sqlx::Error> {
        if digests.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT d, \
                    EXISTS (SELECT 1 FROM blobs b WHERE b.digest = d), \
                    EXISTS (SELECT 1 FROM blob_claims c WHERE c.digest = d \
                            AND c.claimed_at > now() - make_interval(secs => $2)) \
             FROM unnest($1::text[]) AS d",
        )
        .bind(digests)
        .bind(seconds(window))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(digest, registered, claimed)| {
                let protection = if registered {
                    Protection::Registered
                } else if claimed {
                    Protection::Claimed
                } else {
                    return None;
                };
                Some((digest, protection))
            })
            .collect())
    }

    /// Begins removing the copy of `digest`: takes the digest's exclusive lock (waiting for
    /// claims in progress), then checks again that it is neither registered nor claimed less
    /// than `window` ago. The statement runs after the lock is granted, so it sees every claim
    /// committed before.
    #[tracing::instrument(name = "db.lock_for_removal", skip_all, err(level = "warn"))]
    pub async fn lock_for_removal(
        &self,
        digest: &str,
        window: Duration,
    ) -> Result<RemovalCheck, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(BLOB_LOCK_CLASS)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        let (registered, claimed): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM blobs WHERE digest = $1), \
                    EXISTS (SELECT 1 FROM blob_claims WHERE digest = $1 \
                            AND claimed_at > now() - make_interval(secs => $2))",
        )
        .bind(digest)
        .bind(seconds(window))
        .fetch_one(&mut *tx)
        .await?;
        if registered || claimed {
            tx.rollback().await?;
            let protection = if registered {
                Protection::Registered
            } else {
                Protection::Claimed
            };
            return Ok(RemovalCheck::Protected(protection));
        }
        Ok(RemovalCheck::Clear(BlobRemoval { tx }))
    }

    /// Drops the claims older than `window`: every step that made one has ended since, its copy
    /// registered or abandoned. Returns how many.
    #[tracing::instrument(name = "db.drop_stale_claims", skip_all, err(level = "warn"))]
    pub async fn drop_stale_claims(&self, window: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM blob_claims WHERE claimed_at <= now() - make_interval(secs => $1)",
        )
        .bind(seconds(window))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
