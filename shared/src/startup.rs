//! Start-up steps both services share.

use std::future::Future;
use std::time::Duration;

/// Tries of a start-up step that reaches another service (connecting to and migrating a
/// database) before the process gives up: a database restarting, or a backend terminated
/// mid-migration, must not end a replica that would come up a second later.
const TRIES: u32 = 6;

/// Runs `step` until it succeeds, up to [`TRIES`] times, waiting 0.5 s, 1 s, 2 s, 4 s, 8 s
/// between tries (15.5 s in all), logging each failure with `what`. The last error is returned.
pub async fn with_retries<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(error) if attempt < TRIES => {
                tracing::warn!(%error, attempt, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_is_retried_until_it_succeeds_or_the_tries_run_out() {
        let mut calls = 0;
        let result: Result<u32, String> = with_retries("step", || {
            calls += 1;
            let outcome = if calls < 3 {
                Err("down".to_owned())
            } else {
                Ok(calls)
            };
            async move { outcome }
        })
        .await;
        assert_eq!(result, Ok(3));
        let mut calls = 0;
        let result: Result<(), String> = with_retries("step", || {
            calls += 1;
            async { Err("down".to_owned()) }
        })
        .await;
        assert_eq!((result, calls), (Err("down".to_owned()), TRIES));
    }
}
