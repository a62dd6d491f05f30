//! `kip cache prune`: what kip keeps in its cache only to be fast, removed.

use super::Context;
use crate::ExitStatus;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Remove the spare data directories kip prepares ahead of the next instance (two per template, beside it),
    /// and what interrupted preparations left. Templates and engine builds stay; the next new instance is copied
    /// from its template, and a spare is prepared again after it.
    Prune,
}

pub fn run(_context: &Context, command: Command) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Prune => {
            let templates = super::project::cache_dir()?.join("templates");
            let (removed, freed) = kip_providers::template::prune_spares(&templates)?;
            println!(
                "Removed {removed} spare data director{} ({:.1} MB) from {}.",
                if removed == 1 { "y" } else { "ies" },
                freed as f64 / 1e6,
                templates.display()
            );
            Ok(ExitStatus::Success)
        }
    }
}
