//! `kip init`: writes a commented starter kip.hcl that passes `kip lint` as it stands.

use std::io::Write as _;

use super::Context;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite an existing kip.hcl.
    #[arg(long)]
    pub force: bool,
}

pub const STARTER: &str = r#"# kip.hcl: the engines this project needs. `kip plan` shows what would change, `kip apply` makes it so.
# Reference: `kip schema postgres` (or valkey, mariadb, nats, s3, process) lists every block and argument.

# A PostgreSQL server for the app. It listens on a unix socket in .kip/ unless a port is set.
postgres "main" {
  version = "16"

  settings = {
    work_mem = "8MB"
  }

  # A login role for the application; its password is generated and kept in .kip/state.json.
  role "app" {
    login = true
  }

  database "app" {
    owner      = "app"
    extensions = ["pgcrypto"]
  }
}

# A cache. Uncomment to add it.
# valkey "cache" {
#   version   = "9"
#   maxmemory = "64mb"
# }

# Values for your application; `kip env` prints them as environment variables.
output "database_url" {
  value = postgres.main.database.app.url
}
"#;

pub fn run(context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let path = context.dir.join(kip_core::config::CONFIG_FILE);
    if path.exists() && !args.force {
        return Err(with_hint(
            anyhow::anyhow!("{} already exists", path.display()),
            "kip init never overwrites a configuration; pass --force to replace it",
        ));
    }
    std::fs::write(&path, STARTER)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    writeln!(
        std::io::stdout().lock(),
        "Wrote {}. Next: kip lint, then kip apply.",
        path.display()
    )?;
    Ok(ExitStatus::Success)
}
