//! `kip cache prune`: what kip keeps in its cache only to be fast, removed.

use super::Context;
use crate::ExitStatus;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Remove the spare data directories kip prepares ahead of the next instance (two per template, beside it),
    /// the spare account it makes ahead of the next new project when it runs as root, and what interrupted
    /// preparations left. Templates and engine builds stay; the next new instance is copied from its template,
    /// and a spare is prepared again after it.
    Prune,
}

pub fn run(_context: &Context, command: Command) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Prune => {
            let cache = super::project::cache_dir()?;
            let templates = cache.join("templates");
            let (removed, freed) = kip_providers::template::prune_spares(&templates)?;
            println!(
                "Removed {removed} spare data director{} ({:.1} MB) from {}.",
                if removed == 1 { "y" } else { "ies" },
                freed as f64 / 1e6,
                templates.display()
            );
            let accounts = kip_core::runas::SpareAccounts::in_cache(&cache);
            let (deleted, unused) = accounts.prune()?;
            if deleted > 0 {
                println!(
                    "Deleted {deleted} spare account{} ({}).",
                    if deleted == 1 { "" } else { "s" },
                    accounts.dir().display()
                );
            }
            if unused > 0 {
                println!(
                    "Deleted {unused} account{} of projects that are gone (deleted without `kip destroy`).",
                    if unused == 1 { "" } else { "s" },
                );
            }
            Ok(ExitStatus::Success)
        }
    }
}
