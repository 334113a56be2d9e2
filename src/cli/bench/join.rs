//! `odl bench join`.

#[derive(clap::Args, Debug)]
pub struct BenchJoinArgs {}

pub fn run(_args: BenchJoinArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl bench join is not built yet")
}
