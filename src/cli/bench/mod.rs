//! `odl bench …`: throughput and memory figures, one module per service. Benchmarks
//! print their figures; they never assert on time (the machines are shared and noisy).

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {}
}
