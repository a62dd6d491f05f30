//! `kip lint` (alias `validate`): the whole front half of the pipeline, with every problem reported at once.

use std::io::Write as _;

use super::{Context, VarArgs, load_and_check, print_diagnostics};
use crate::ExitStatus;
use crate::render::{self, Style};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print diagnostics as JSON on stdout (a versioned format for editors and CI).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub vars: VarArgs,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let checked = load_and_check(context, &args.vars)?;
    let failed = checked.diagnostics.has_errors();
    if args.json {
        let json = render::diagnostics_json(checked.diagnostics.iter(), &checked.sources);
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&json)?
        )?;
    } else {
        print_diagnostics(context, &checked)?;
        let style = Style::for_stdout(context.color);
        let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
        if failed {
            let style = Style::for_stderr(context.color);
            let message = format!("{errors} error{} found.", plural(errors));
            writeln!(std::io::stderr().lock(), "{}", style.red(&message))?;
        } else {
            let mut stdout = std::io::stdout().lock();
            let graph = checked.graph.as_ref();
            let (instances, nodes) = (
                checked
                    .config
                    .as_ref()
                    .map_or(0, |config| config.instances.len()),
                graph.map_or(0, |graph| graph.len()),
            );
            writeln!(
                stdout,
                "{} {instances} instance{}, {nodes} node{} in the graph.",
                style.green("The configuration is valid:"),
                plural(instances),
                plural(nodes)
            )?;
        }
    }
    Ok(if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

pub fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}
