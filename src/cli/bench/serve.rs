//! `odl bench serve`.

#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {}

pub fn run(_args: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl bench serve is not built yet")
}
