//! `ferry-importer`: see the crate documentation of `ferry_importer`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferry_importer::config::ImporterArgs::parse();
    let config = match args.validate() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ferry-importer: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    ferry_shared::telemetry::init("ferry-importer");
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "ferry-importer: cannot listen on {}: {err}",
                config.listen_addr
            );
            return std::process::ExitCode::from(1);
        }
    };
    match ferry_importer::run(config, listener, ferry_shared::grpc::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "importer stopped");
            eprintln!("ferry-importer: {err}");
            std::process::ExitCode::from(1)
        }
    }
}
