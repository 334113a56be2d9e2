//! `odl bench publish`.

#[derive(clap::Args, Debug)]
pub struct BenchPublishArgs {}

pub fn run(_args: BenchPublishArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl bench publish is not built yet")
}
