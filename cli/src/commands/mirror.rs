//! `kip mirror add|index`: build a binary mirror a team can host on any static file server.

use std::io::Write as _;
use std::path::PathBuf;

use super::Context;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add an engine archive (tar.gz or tar.zst with bin/, lib/, share/) to a mirror directory and its index.
    Add {
        /// The engine the archive holds (postgres, valkey, mariadb, nats, s3).
        engine: String,
        /// The full engine version, e.g. 16.14.0.
        #[arg(value_name = "VERSION")]
        full_version: String,
        /// The archive to add.
        archive: PathBuf,
        /// The platform triple the binaries run on; this machine's by default.
        #[arg(long)]
        platform: Option<String>,
        /// The mirror directory; the current directory by default.
        #[arg(long, value_name = "DIR")]
        mirror: Option<PathBuf>,
    },
    /// Rebuild DIR/index.json from the archives in DIR/ENGINE/VERSION/PLATFORM/.
    Index {
        /// The mirror directory.
        dir: PathBuf,
    },
}

fn publish_error(error: kip_core::mirror::PublishError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

pub fn run(context: &Context, command: Command) -> anyhow::Result<ExitStatus> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Add {
            engine,
            full_version: version,
            archive,
            platform,
            mirror,
        } => {
            let dir = context.dir.join(mirror.unwrap_or_default());
            let platform = platform.unwrap_or_else(kip_core::mirror::host_platform);
            let archive = context.dir.join(archive);
            let artifact = kip_core::mirror::add(&dir, &engine, &version, &platform, &archive)
                .map_err(publish_error)?;
            writeln!(
                stdout,
                "{engine} {version} {platform}: {} ({} bytes, sha256 {})",
                artifact.url, artifact.size, artifact.sha256
            )?;
        }
        Command::Index { dir } => {
            let dir = context.dir.join(dir);
            let index = kip_core::mirror::rebuild_index(&dir).map_err(publish_error)?;
            let count: usize = index
                .engines
                .values()
                .flat_map(|versions| versions.values())
                .map(|p| p.len())
                .sum();
            writeln!(
                stdout,
                "Wrote {} with {count} artifact(s).",
                dir.join(kip_core::mirror::INDEX_FILE).display()
            )?;
        }
    }
    Ok(ExitStatus::Success)
}
