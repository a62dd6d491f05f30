//! `kip graph`: the resource graph as text (one node a line, in dependency order, with what it waits for) or as
//! Graphviz dot.

use std::io::Write as _;

use super::{Context, VarArgs, load_and_check, print_diagnostics};
use crate::ExitStatus;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub vars: VarArgs,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let checked = load_and_check(context, &args.vars)?;
    let Some(graph) = checked.graph.as_ref() else {
        print_diagnostics(context, &checked)?;
        return Ok(ExitStatus::Failure);
    };
    print_diagnostics(context, &checked)?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Dot => stdout.write_all(graph.to_dot().as_bytes())?,
        Format::Text => {
            for node in graph.topological() {
                let dependencies: Vec<String> = graph
                    .dependencies(&node.address)
                    .iter()
                    .map(|dep| dep.address.to_string())
                    .collect();
                if dependencies.is_empty() {
                    writeln!(stdout, "{}", node.address)?;
                } else {
                    writeln!(stdout, "{} <- {}", node.address, dependencies.join(", "))?;
                }
            }
        }
    }
    Ok(ExitStatus::Success)
}
