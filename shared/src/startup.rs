//! Start-up steps both services share: the binaries' `serve` and `migrate` commands (check the
//! configuration, start telemetry, bind, run, map the outcome to an exit code), database
//! connections that survive a database restarting, and the metrics listener.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::TcpListener;

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

/// Connects to a database and applies its migrations (`migrate` is handed a clone of the
/// connection pool), each step with [`with_retries`].
pub async fn open_database<S, E, C, CF, M, MF, ME>(
    name: &str,
    mut connect: C,
    migrate: M,
) -> Result<S, E>
where
    S: Clone,
    E: Display + From<ME>,
    ME: Display,
    C: FnMut() -> CF,
    CF: Future<Output = Result<S, E>>,
    M: Fn(S) -> MF,
    MF: Future<Output = Result<(), ME>>,
{
    let store = with_retries(&format!("connecting to the {name}"), &mut connect).await?;
    with_retries(&format!("migrating the {name}"), || migrate(store.clone())).await?;
    Ok(store)
}

/// Binds the metrics endpoint's listener when an address is configured, and logs where it is.
pub async fn bind_metrics(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics serving on /metrics");
    Ok(Some(listener))
}

/// A service binary's `serve` command: a configuration error exits 2; otherwise telemetry
/// starts, the gRPC address is bound (exit 1 if it cannot be), and `run` serves until SIGTERM or
/// SIGINT (exit 0) or fails (exit 1, the error logged and printed).
pub async fn serve_main<C, E, R, Fut>(
    binary: &'static str,
    config: Result<C, String>,
    listen_addr: impl FnOnce(&C) -> SocketAddr,
    run: R,
) -> ExitCode
where
    E: Display,
    R: FnOnce(C, TcpListener) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let config = match config {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{binary}: {message}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = crate::telemetry::init(binary);
    let addr = listen_addr(&config);
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("{binary}: cannot listen on {addr}: {error}");
            return ExitCode::from(1);
        }
    };
    match run(config, listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{binary} stopped");
            eprintln!("{binary}: {error}");
            ExitCode::from(1)
        }
    }
}

/// A service binary's `migrate` command: applies the pending migrations of `database` and
/// prints the schema version (exit 0), or prints why not (2 for a configuration error, else 1).
pub async fn migrate_main<E, M, Fut>(
    binary: &'static str,
    database: &str,
    url: Result<String, String>,
    migrate: M,
) -> ExitCode
where
    E: Display,
    M: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<i64, E>>,
{
    let url = match url {
        Ok(url) => url,
        Err(message) => {
            eprintln!("{binary}: {message}");
            return ExitCode::from(2);
        }
    };
    match migrate(url).await {
        Ok(version) => {
            println!("{binary}: {database} schema at version {version}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{binary}: {error}");
            ExitCode::from(1)
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
