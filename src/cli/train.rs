//! `odl train`.

#[derive(clap::Args, Debug)]
pub struct TrainArgs {}

pub fn run(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl train is not built yet")
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {}

pub fn run_eval(_args: EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("odl eval is not built yet")
}
