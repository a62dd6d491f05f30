//! `kip schema [ENGINE]`: what an engine accepts, from the same schemas the checker validates against.

use std::io::Write as _;

use super::Context;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The engine to describe (postgres, valkey, mariadb, nats, s3, process); all of them when absent.
    pub engine: Option<String>,
    /// Print the schema as JSON.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the reference page as Markdown (what docs/schemas/ holds).
    #[arg(long)]
    pub markdown: bool,
}

pub fn run(_context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let all = kip_schemas::engines();
    let selected: Vec<&kip_schemas::EngineSchema> = match &args.engine {
        None => all.iter().collect(),
        Some(name) => match kip_schemas::engine(name) {
            Some(engine) => vec![engine],
            None => {
                let names: Vec<&str> = all.iter().map(|engine| engine.name).collect();
                let hint = match kip_schemas::did_you_mean(name, names.iter().copied()) {
                    Some(close) => format!("did you mean {close:?}?"),
                    None => format!("the engines are: {}", names.join(", ")),
                };
                return Err(with_hint(anyhow::anyhow!("no engine named {name:?}"), hint));
            }
        },
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let owned: Vec<kip_schemas::EngineSchema> =
            selected.iter().map(|engine| (*engine).clone()).collect();
        let json = kip_schemas::to_json(&owned);
        writeln!(stdout, "{}", serde_json::to_string_pretty(&json)?)?;
    } else if args.markdown {
        for engine in selected {
            write!(stdout, "{}", kip_schemas::to_markdown(engine))?;
        }
    } else {
        for engine in selected {
            write!(stdout, "{}", kip_schemas::to_markdown(engine))?;
        }
    }
    Ok(ExitStatus::Success)
}
