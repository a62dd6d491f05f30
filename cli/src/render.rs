//! Rendering for people: diagnostics with their source line and a caret, colour on a terminal.
//!
//! Colour is on only when the stream is a terminal and NO_COLOR is unset (or when forced with `--color always`);
//! piped output and CI logs stay plain text.

use std::io::IsTerminal;

use kip_core::diag::{Diagnostic, Severity};
use kip_core::source::Sources;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The styles of one output stream.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub fn for_stderr(choice: ColorChoice) -> Self {
        Self::decide(choice, std::io::stderr().is_terminal())
    }

    pub fn for_stdout(choice: ColorChoice) -> Self {
        Self::decide(choice, std::io::stdout().is_terminal())
    }

    fn decide(choice: ColorChoice, terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && !no_color,
        };
        Style { color }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    pub fn yellow(&self, text: &str) -> String {
        self.paint("1;33", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn blue(&self, text: &str) -> String {
        self.paint("1;34", text)
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
}

/// One diagnostic, as
///
/// ```text
/// error: Unsupported argument
///   --> kip.hcl:7:3
///    |
///  7 |   maxmemroy = "64mb"
///    |   ^^^^^^^^^
///    = An argument named "maxmemroy" is not expected here. Did you mean "maxmemory"?
/// ```
pub fn diagnostic(diagnostic: &Diagnostic, sources: &Sources, style: Style) -> String {
    let resolved = diagnostic.resolve(sources);
    let label = match diagnostic.severity {
        Severity::Error => style.red("error"),
        Severity::Warning => style.yellow("warning"),
    };
    let mut out = format!("{label}: {}\n", style.bold(&diagnostic.summary));
    match &resolved.position {
        Some(position) => {
            let number = position.start.line.to_string();
            let gutter = " ".repeat(number.len());
            let bar = style.blue("|");
            out.push_str(&format!(
                "{gutter}{} {}:{}:{}\n",
                style.blue("-->"),
                position.file,
                position.start.line,
                position.start.column
            ));
            out.push_str(&format!("{gutter} {bar}\n"));
            out.push_str(&format!(
                "{} {bar} {}\n",
                style.blue(&number),
                position.line_text
            ));
            let line_chars = position.line_text.chars().count();
            let start = position.start.column.saturating_sub(1).min(line_chars);
            let end = if position.end.line == position.start.line {
                position.end.column.saturating_sub(1).min(line_chars)
            } else {
                line_chars
            };
            let width = end.saturating_sub(start).max(1);
            // Keep tabs in the indent so the caret lines up under the same characters.
            let indent: String = position
                .line_text
                .chars()
                .take(start)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let carets = "^".repeat(width);
            let carets = match diagnostic.severity {
                Severity::Error => style.red(&carets),
                Severity::Warning => style.yellow(&carets),
            };
            out.push_str(&format!("{gutter} {bar} {indent}{carets}\n"));
            out.push_str(&format!(
                "{gutter} {} {}\n",
                style.blue("="),
                diagnostic.detail
            ));
        }
        None => out.push_str(&format!("  {} {}\n", style.blue("="), diagnostic.detail)),
    }
    out
}

/// The `--json` form of diagnostics, versioned so editors and CI can rely on it.
pub fn diagnostics_json<'a>(
    diagnostics: impl IntoIterator<Item = &'a Diagnostic>,
    sources: &Sources,
) -> serde_json::Value {
    let items: Vec<serde_json::Value> = diagnostics
        .into_iter()
        .map(|diagnostic| {
            let resolved = diagnostic.resolve(sources);
            let range = resolved.position.as_ref().zip(diagnostic.location.as_ref()).map(|(position, location)| {
                serde_json::json!({
                    "filename": position.file,
                    "start": { "line": position.start.line, "column": position.start.column, "byte": location.span.start },
                    "end": { "line": position.end.line, "column": position.end.column, "byte": location.span.end },
                })
            });
            serde_json::json!({
                "severity": diagnostic.severity,
                "summary": diagnostic.summary,
                "detail": diagnostic.detail,
                "range": range,
                "snippet": resolved.position.as_ref().map(|position| position.line_text),
            })
        })
        .collect();
    let errors = items
        .iter()
        .filter(|item| item["severity"] == "error")
        .count();
    serde_json::json!({
        "format_version": "1.0",
        "valid": errors == 0,
        "error_count": errors,
        "warning_count": items.len() - errors,
        "diagnostics": items,
    })
}
