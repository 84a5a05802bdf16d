//! `ferryctl`: see `ferry_scheduler::ctl`.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = ferry_scheduler::ctl::CtlArgs::parse();
    match ferry_scheduler::ctl::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ferryctl: {err}");
            std::process::ExitCode::from(1)
        }
    }
}
