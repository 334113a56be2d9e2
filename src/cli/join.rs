//! `odl join`.

#[derive(clap::Args, Debug)]
pub struct JoinArgs {}

pub fn run(_args: JoinArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl join is not built yet")
}
