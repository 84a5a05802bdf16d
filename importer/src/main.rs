//! `ferry-importer`: see the crate documentation of `ferry_importer`.

use std::process::ExitCode;

use clap::Parser;

use ferry_importer::config::{ImportCommand, ImporterArgs, ImporterCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ImporterArgs::parse();
    match args.command.clone() {
        Some(ImporterCommand::Import(command)) => import(&args, &command).await,
        Some(ImporterCommand::Migrate) => migrate(&args).await,
        Some(ImporterCommand::Serve) | None => serve(&args).await,
    }
}

async fn serve(args: &ImporterArgs) -> ExitCode {
    let config = match args.validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ferry-importer: {message}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = ferry_shared::telemetry::init("ferry-importer");
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "ferry-importer: cannot listen on {}: {err}",
                config.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    match ferry_importer::run(config, listener, ferry_shared::grpc::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "importer stopped");
            eprintln!("ferry-importer: {err}");
            ExitCode::from(1)
        }
    }
}

async fn migrate(args: &ImporterArgs) -> ExitCode {
    let url = match args.validate_migrate() {
        Ok(url) => url,
        Err(message) => {
            eprintln!("ferry-importer: {message}");
            return ExitCode::from(2);
        }
    };
    match ferry_importer::migrate_database(&url).await {
        Ok(version) => {
            println!("ferry-importer: metadata database schema at version {version}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ferry-importer: {err}");
            ExitCode::from(1)
        }
    }
}

async fn import(args: &ImporterArgs, command: &ImportCommand) -> ExitCode {
    let config = match args.validate_import(command) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ferry-importer: {message}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = ferry_shared::telemetry::init("ferry-importer");
    let dry_run = config.dry_run;
    match ferry_importer::run_import(config).await {
        Ok(summary) => {
            summary.print(dry_run);
            if summary.failed_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("ferry-importer: {err}");
            ExitCode::from(1)
        }
    }
}
