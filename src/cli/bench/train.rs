//! `odl bench train`.

#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {}

pub fn run(_args: BenchTrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl bench train is not built yet")
}
