//! `ddpm model`: architecture summary and parameter count of a preset.

#[derive(clap::Args)]
pub struct ModelArgs {
    /// Model preset: cifar10, lsun256 or tiny.
    #[arg(long)]
    pub preset: String,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: ModelArgs) -> anyhow::Result<()> {
    anyhow::bail!("ddpm model is being written")
}
