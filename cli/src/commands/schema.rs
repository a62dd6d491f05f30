//! `kip schema [ENGINE]`: what an engine accepts, from the same schemas the checker validates against.

use std::io::Write;

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
        for (index, engine) in selected.iter().enumerate() {
            if index > 0 {
                writeln!(stdout)?;
            }
            let majors: Vec<String> = engine.majors.iter().map(u32::to_string).collect();
            let first_line = engine.doc.lines().next().unwrap_or_default();
            writeln!(stdout, "{}: {first_line}", engine.name)?;
            if !majors.is_empty() {
                writeln!(stdout, "supported majors: {}", majors.join(", "))?;
            }
            write_block(&mut stdout, &engine.instance, 0)?;
        }
        writeln!(
            stdout,
            "\n(--markdown for the full reference, --json for tools)"
        )?;
    }
    Ok(ExitStatus::Success)
}

/// A compact tree: each block with its labels, then one line per argument (name, type, required or default,
/// badges).
fn write_block(
    out: &mut impl Write,
    block: &kip_schemas::BlockSchema,
    depth: usize,
) -> std::io::Result<()> {
    let indent = "  ".repeat(depth);
    let labels: String = block
        .labels
        .iter()
        .map(|label| format!(" \"{}\"", label.to_uppercase()))
        .collect();
    writeln!(out, "{indent}{}{labels} {{", block.name)?;
    let width = block
        .arguments
        .iter()
        .map(|argument| argument.name.len())
        .max()
        .unwrap_or(0);
    for argument in &block.arguments {
        let mut notes = Vec::new();
        if argument.required {
            notes.push("required".to_owned());
        } else if let Some(default) = &argument.default {
            notes.push(format!("default {default}"));
        }
        if let Some(since) = &argument.since {
            notes.push(format!("since {since}"));
        }
        if argument.sensitive {
            notes.push("sensitive".to_owned());
        }
        let line = format!(
            "{indent}  {:<width$}  {}  {}",
            argument.name,
            argument.ty,
            notes.join(", ")
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    for child in &block.blocks {
        write_block(out, child, depth + 1)?;
    }
    writeln!(out, "{indent}}}")
}
