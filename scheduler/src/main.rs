//! `ferry-scheduler`: see the crate documentation of `ferry_scheduler`.

use std::process::ExitCode;

use clap::Parser;

use ferry_scheduler::config::{SchedulerArgs, SchedulerCommand};
use ferry_shared::startup::{migrate_main, serve_main};

const BINARY: &str = "ferry-scheduler";

#[tokio::main]
async fn main() -> ExitCode {
    let args = SchedulerArgs::parse();
    if let Some(SchedulerCommand::Migrate) = args.command {
        return migrate_main(
            BINARY,
            "scheduler database",
            args.validate_migrate(),
            |url| async move { ferry_scheduler::migrate_database(&url).await },
        )
        .await;
    }
    serve_main(
        BINARY,
        args.validate(),
        |config| config.listen_addr,
        |config, listener| {
            ferry_scheduler::run(config, listener, ferry_shared::grpc::shutdown_signal())
        },
    )
    .await
}
