//! `ferry-scheduler`: see the crate documentation of `ferry_scheduler`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferry_scheduler::config::SchedulerArgs::parse();
    if let Some(ferry_scheduler::config::SchedulerCommand::Migrate) = args.command {
        return migrate(&args).await;
    }
    let config = match args.validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ferry-scheduler: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = ferry_shared::telemetry::init("ferry-scheduler");
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

async fn migrate(args: &ferry_scheduler::config::SchedulerArgs) -> std::process::ExitCode {
    let url = match args.validate_migrate() {
        Ok(url) => url,
        Err(message) => {
            eprintln!("ferry-scheduler: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    match ferry_scheduler::migrate_database(&url).await {
        Ok(version) => {
            println!("ferry-scheduler: scheduler database schema at version {version}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ferry-scheduler: {err}");
            std::process::ExitCode::from(1)
        }
    }
}
