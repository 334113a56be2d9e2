//! The `odl` binary: parses arguments, sets up logging, dispatches to a service, and
//! reports errors with their context at the edge. No service logic lives here.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = odl::cli::Cli::parse();
    odl::cli::init_tracing();
    match odl::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
