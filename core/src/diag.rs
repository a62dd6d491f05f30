//! Diagnostics: every problem kip finds in a configuration, with where it is and what to do about it.
//!
//! Checking accumulates diagnostics instead of stopping at the first problem, so a user fixes a whole file in one
//! round. A diagnostic carries a constant summary (stable for tests and editors), a detail written for the person
//! reading it, and a source range. Rendering (colour, carets) belongs to the CLI; this module only computes the
//! line, column and source line text so that every renderer shows the same thing.

use std::ops::Range;

use crate::source::{FileId, LineCol, Sources};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Where a diagnostic points: a byte range in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: FileId,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A short constant phrase ("Unsupported argument"): the same text for every instance of the problem.
    pub summary: String,
    /// What exactly is wrong here and what to do about it.
    pub detail: String,
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn error(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            summary: summary.into(),
            detail: detail.into(),
            location: None,
        }
    }

    pub fn warning(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            summary: summary.into(),
            detail: detail.into(),
            location: None,
        }
    }

    pub fn at(mut self, file: FileId, span: Range<usize>) -> Self {
        self.location = Some(Location { file, span });
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The diagnostic resolved against its sources: file name, line, column and the source line.
    pub fn resolve<'a>(&'a self, sources: &'a Sources) -> ResolvedDiagnostic<'a> {
        let position = self.location.as_ref().map(|location| {
            let file = sources.get(location.file);
            let start = file.line_col(location.span.start);
            let end = file.line_col(location.span.end.max(location.span.start));
            ResolvedPosition {
                file: &file.name,
                start,
                end,
                line_text: file.line_text(start.line),
            }
        });
        ResolvedDiagnostic {
            diagnostic: self,
            position,
        }
    }
}

/// A diagnostic together with the human coordinates of its location.
#[derive(Debug, Clone)]
pub struct ResolvedDiagnostic<'a> {
    pub diagnostic: &'a Diagnostic,
    pub position: Option<ResolvedPosition<'a>>,
}

#[derive(Debug, Clone)]
pub struct ResolvedPosition<'a> {
    pub file: &'a str,
    pub start: LineCol,
    pub end: LineCol,
    pub line_text: &'a str,
}

/// The diagnostics of one run, in the order they were found (sorted by position before display).
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.items.push(diagnostic);
    }

    pub fn extend(&mut self, diagnostics: impl IntoIterator<Item = Diagnostic>) {
        self.items.extend(diagnostics);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    /// Sorts by file, then position, so output reads top to bottom; diagnostics without a location come first.
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            let key = |d: &Diagnostic| {
                d.location
                    .as_ref()
                    .map(|l| (l.file, l.span.start, l.span.end))
            };
            key(a).cmp(&key(b))
        });
        self.items.dedup();
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}
