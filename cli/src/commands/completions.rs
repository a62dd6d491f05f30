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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use crate::Cli;

    /// The options of `command` and of every visible subcommand under it, as (where, long name).
    fn long_options(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for argument in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = argument.get_long() {
                out.push((path.to_owned(), long.to_owned()));
            }
        }
        for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            long_options(
                subcommand,
                &format!("{path} {}", subcommand.get_name()),
                out,
            );
        }
    }

    /// Every shell's script names every visible subcommand and every long option of each, also with the
    /// subcommands' arguments built late (`defer`): the script is generated from the definition the binary parses
    /// with, built whole first.
    #[test]
    fn every_shell_completes_every_subcommand_and_option() {
        let mut command = Cli::command();
        command.build();
        let mut options = Vec::new();
        long_options(&command, "kip", &mut options);
        assert!(options.len() > 40, "{options:?}");
        // The walk reaches the subcommands' own options, which `defer` builds late.
        assert!(
            options.contains(&("kip apply".to_owned(), "auto-approve".to_owned())),
            "{options:?}"
        );
        let subcommands: Vec<String> = command
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(subcommands.iter().any(|name| name == "apply"));
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::Elvish,
            clap_complete::Shell::PowerShell,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kip", &mut script);
            let script = String::from_utf8(script).expect("a script is text");
            for name in &subcommands {
                assert!(
                    script.contains(name.as_str()),
                    "{shell} completions lack the subcommand `{name}`"
                );
            }
            for (path, long) in &options {
                let written = match shell {
                    clap_complete::Shell::Fish => format!("-l {long}"),
                    _ => format!("--{long}"),
                };
                assert!(
                    script.contains(&written),
                    "{shell} completions lack `{path} --{long}`"
                );
            }
        }
    }
}
