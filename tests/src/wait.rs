//! Waiting for something to happen: a probe polled until it reports the condition, with a
//! deadline that fails the test naming what was awaited and what was seen last.
//!
//! A check that something did *not* happen waits for an event proving that the loop in question
//! ran (a pass counter, a row it updates) before it looks, never for a fixed time.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// How often [`wait_until`] asks its probe.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Asks `probe` every [`POLL_INTERVAL`] until it answers `Ok(value)`, and returns the value.
/// While the condition does not hold the probe answers `Err(seen)`, what it observed instead.
/// Once `within` has passed, the test fails with a message naming `what` it waited for and the
/// last `seen`.
pub async fn wait_until<T, S: Debug>(
    what: &str,
    within: Duration,
    probe: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    match poll_until(within, POLL_INTERVAL, probe).await {
        Ok(value) => value,
        Err(seen) => panic!("waited {within:?} for {what}; last seen: {seen:?}"),
    }
}

/// Asks `probe` every `interval` until it answers `Ok`, and returns that answer; once `within`
/// has passed, returns its last `Err` instead. For a wait whose end is an answer rather than a
/// failure, or that must poll more gently than [`wait_until`]. The probe is asked at least once,
/// and once more after the deadline.
pub async fn poll_until<T, S>(
    within: Duration,
    interval: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
) -> Result<T, S> {
    let deadline = Instant::now() + within;
    loop {
        let past = Instant::now() >= deadline;
        match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) if past => return Err(seen),
            Err(_) => tokio::time::sleep(interval).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_what_the_probe_reports_once_it_holds() {
        let mut asked = 0;
        let value = wait_until("the third ask", Duration::from_secs(5), async || {
            asked += 1;
            if asked == 3 {
                Ok(asked * 10)
            } else {
                Err(asked)
            }
        })
        .await;
        assert_eq!((value, asked), (30, 3));
    }

    #[tokio::test]
    #[should_panic(expected = "for the impossible; last seen: \"not yet\"")]
    async fn fails_naming_what_it_waited_for_and_the_last_state() {
        wait_until("the impossible", Duration::from_millis(60), async || {
            Err::<(), _>("not yet")
        })
        .await;
    }

    #[tokio::test]
    async fn a_poll_past_its_deadline_answers_with_the_last_state() {
        let mut asked = 0;
        let polled = poll_until(Duration::ZERO, Duration::from_millis(1), async || {
            asked += 1;
            Err::<(), _>(asked)
        })
        .await;
        assert_eq!(polled, Err(1), "asked once, past the deadline already");
    }
}
