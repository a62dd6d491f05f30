//! `kip completions SHELL`: a completion script generated from the same clap definition the binary parses with.

use clap::CommandFactory as _;

use crate::{Cli, ExitStatus};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args) -> anyhow::Result<ExitStatus> {
    let mut command = Cli::command();
    clap_complete::generate(
        args.shell,
        &mut command,
        "kip",
        &mut std::io::stdout().lock(),
    );
    Ok(ExitStatus::Success)
}
