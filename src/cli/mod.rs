//! Command-line surface of `odl`: one subcommand per service, each in its own module
//! with its arguments and a `run` that loads config and calls into the service crate.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod dashboard;
pub mod join;
pub mod ps;
pub mod run;
pub mod serve;
pub mod simulate;
pub mod train;

#[derive(Parser, Debug)]
#[command(name = "odl", version, about = "Online deep learning for recommendation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole pipeline in one process: simulator, joiner, trainer, PS, serving.
    Run(run::RunArgs),
    /// Generate a deterministic, drifting stream of the four input streams.
    Simulate(simulate::SimulateArgs),
    /// Join exposures, clicks, detail clicks and feature logs into samples (JOIN.md).
    Join(join::JoinArgs),
    /// Train a model on samples, in file mode or as a cluster worker (TRAIN.md).
    Train(train::TrainArgs),
    /// Evaluate a frozen checkpoint on a samples file without learning (TRAIN.md).
    Eval(train::EvalArgs),
    /// Run one parameter-server shard (TRAIN.md, PUBLISH.md).
    Ps(ps::PsArgs),
    /// Run a serving node: apply published versions, answer predictions (PUBLISH.md).
    Serve(serve::ServeArgs),
    /// The live page over the services' HTTP endpoints (http://127.0.0.1:8080/).
    Dashboard(dashboard::DashboardArgs),
    /// Benchmarks: throughput and memory of each service.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Join(a) => join::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => train::run_eval(a),
        Command::Ps(a) => ps::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Dashboard(a) => dashboard::run(a),
        Command::Bench(b) => bench::run(b),
    }
}

/// Logs go to stderr (stdout is data for some subcommands); `RUST_LOG` filters them.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// SIGINT or SIGTERM cancels `token`, so every service drains and checkpoints before
/// the process exits 0. The handlers are installed before this returns (call it before
/// announcing readiness): a signal right after "ready" must not kill the process.
/// Must be called inside a tokio runtime.
pub fn cancel_on_signal(token: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}
