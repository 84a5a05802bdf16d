//! `ferry-scheduler`: see the crate documentation of `ferry_scheduler`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferry_scheduler::config::SchedulerArgs::parse();
    let config = match args.validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ferry-scheduler: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    ferry_shared::telemetry::init("ferry-scheduler");
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "ferry-scheduler: cannot listen on {}: {err}",
                config.listen_addr
            );
            return std::process::ExitCode::from(1);
        }
    };
    match ferry_scheduler::run(config, listener, ferry_shared::grpc::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "scheduler stopped");
            eprintln!("ferry-scheduler: {err}");
            std::process::ExitCode::from(1)
        }
    }
}
