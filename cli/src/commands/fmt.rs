//! `kip fmt`: rewrites configuration files in the canonical layout; `--check` only reports which would change.

use std::io::Write as _;
use std::path::PathBuf;

use super::Context;
use crate::render::Style;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not write; exit 1 and name the files that are not formatted.
    #[arg(long)]
    pub check: bool,
    /// Show the changes as a diff.
    #[arg(long)]
    pub diff: bool,
    /// Files to format; by default kip.hcl and every *.kip.hcl in the directory.
    pub files: Vec<PathBuf>,
}

pub fn run(context: &Context, args: Args) -> anyhow::Result<ExitStatus> {
    let files = if args.files.is_empty() {
        kip_core::config::discover(&context.dir).map_err(|error| match error.hint() {
            Some(hint) => with_hint(error, hint),
            None => error.into(),
        })?
    } else {
        args.files
            .iter()
            .map(|file| context.dir.join(file))
            .collect()
    };
    let style = Style::for_stdout(context.color);
    let mut stdout = std::io::stdout().lock();
    let mut unformatted = Vec::new();
    let mut broken = 0;
    for path in &files {
        let name = path
            .strip_prefix(&context.dir)
            .unwrap_or(path)
            .display()
            .to_string();
        let source = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read {name}: {error}"))?;
        let formatted = match kip_core::fmt::format_source(&source) {
            Ok(formatted) => formatted,
            Err(error) => {
                let err_style = Style::for_stderr(context.color);
                writeln!(
                    std::io::stderr().lock(),
                    "{}: {name}: {error}",
                    err_style.red("error")
                )?;
                broken += 1;
                continue;
            }
        };
        if formatted == source {
            continue;
        }
        unformatted.push(name.clone());
        if args.diff {
            write_diff(&mut stdout, &name, &source, &formatted, style)?;
        }
        if args.check {
            if !args.diff {
                writeln!(stdout, "{name}")?;
            }
        } else {
            kip_core::fsutil::write_atomically(path, formatted.as_bytes())
                .map_err(|error| anyhow::anyhow!("cannot write {name}: {error}"))?;
            if !args.diff {
                writeln!(stdout, "{name}")?;
            }
        }
    }
    if broken > 0 {
        return Err(with_hint(
            anyhow::anyhow!("{broken} file(s) could not be parsed, so they were left as they are"),
            "run kip lint to see every problem with its line",
        ));
    }
    Ok(if args.check && !unformatted.is_empty() {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

fn write_diff(
    out: &mut impl std::io::Write,
    name: &str,
    before: &str,
    after: &str,
    style: Style,
) -> std::io::Result<()> {
    let diff = similar::TextDiff::from_lines(before, after);
    writeln!(
        out,
        "{}",
        style.bold(&format!("--- {name}\n+++ {name} (formatted)"))
    )?;
    for hunk in diff.unified_diff().context_radius(2).iter_hunks() {
        writeln!(out, "{}", style.blue(&hunk.header().to_string()))?;
        for change in hunk.iter_changes() {
            let line = format!("{}{}", change.tag(), change.value());
            let line = line.strip_suffix('\n').unwrap_or(&line);
            match change.tag() {
                similar::ChangeTag::Delete => writeln!(out, "{}", style.red(line))?,
                similar::ChangeTag::Insert => writeln!(out, "{}", style.green(line))?,
                similar::ChangeTag::Equal => writeln!(out, "{line}")?,
            }
        }
    }
    Ok(())
}
