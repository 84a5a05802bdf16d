//! `ferry-gcs-emulator [--addr HOST:PORT] [--latency-ms N] [--bucket NAME]...`: serves the
//! in-memory GCS JSON API emulator (see `ferry_tests::gcs_emulator`) until killed. Prints its
//! address (`host:port`, for `STORAGE_EMULATOR_HOST`) on the first line of stdout.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use ferry_tests::gcs_emulator::GcsEmulator;

/// A GCS JSON API emulator, in memory, that answers every request after a set delay.
#[derive(Debug, Parser)]
#[command(name = "ferry-gcs-emulator")]
struct Args {
    /// Address to listen on (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Delay before each answer, in milliseconds (fractions allowed). Change it later with
    /// `POST /_emulator/latency?ms=N`; counters at `GET /_emulator/stats`.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// A bucket to create at start (repeatable).
    #[arg(long)]
    bucket: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.latency_ms.is_finite() && args.latency_ms >= 0.0) {
        eprintln!("ferry-gcs-emulator: --latency-ms must be a non-negative number");
        return ExitCode::from(2);
    }
    let latency = Duration::from_secs_f64(args.latency_ms / 1000.0);
    let emulator = match GcsEmulator::bind(args.addr, latency) {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!(
                "ferry-gcs-emulator: cannot listen on {}: {error}",
                args.addr
            );
            return ExitCode::FAILURE;
        }
    };
    for bucket in &args.bucket {
        if let Err(error) = emulator.create_bucket(bucket) {
            eprintln!("ferry-gcs-emulator: --bucket {bucket}: {error}");
            return ExitCode::from(2);
        }
    }
    println!("{}", emulator.address());
    let _ = std::io::stdout().flush();
    eprintln!(
        "ferry-gcs-emulator: serving {} with {latency:?} a request",
        emulator.endpoint()
    );
    loop {
        std::thread::park();
    }
}
