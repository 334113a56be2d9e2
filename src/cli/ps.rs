//! `odl ps`.

#[derive(clap::Args, Debug)]
pub struct PsArgs {}

pub fn run(_args: PsArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl ps is not built yet")
}
