//! Canonical layout of `kip.hcl` files: the engine behind `kip fmt`.
//!
//! `format_source` gives every kip file the same shape, in the spirit of `terraform fmt`, so
//! reviews show real changes instead of whitespace noise. It changes layout only: every token,
//! every comment and the order of everything are kept, so the formatted file decodes to exactly
//! the same configuration.
//!
//! # How it works, and why
//!
//! The source is first parsed with `hcl::edit` so that invalid input is rejected with a line and
//! column, and nothing is rewritten that we do not understand. The layout itself is computed on
//! a token stream rather than on the syntax tree, like HashiCorp's `hclwrite`: the rules are about
//! lines (indentation, blank lines, alignment of `=`), and a token stream keeps comments, quoted
//! templates and heredocs byte-for-byte by construction. Each quoted string and each heredoc is a
//! single token, so neither their contents nor `${ … }` interpolations are ever re-spaced.
//!
//! # Layout rules
//!
//! - Line breaks are the author's: lines are never joined or split, with one exception, an empty
//!   bracket pair spread over lines (`x {` + `}`, `[` + `]`) collapses to `{}` / `[]` / `()`.
//!   A one-line block such as `role "app" { login = true }` therefore stays on one line, whatever
//!   its length: there is no line-width limit.
//! - Indentation is two spaces per open bracket level. A line that opens several brackets at
//!   once (`merge({`) indents what follows by one level only, and the line that closes them comes
//!   back to the opener's indentation. Heredoc bodies, including their closing marker, and the
//!   continuation lines of a `/* … */` comment are left exactly as written.
//! - Spacing inside a line: one space around `=` and binary operators (`:` included, so an object
//!   item written `x: 1` becomes `x : 1`), after `,`, inside `{ … }` and between block header
//!   parts (`postgres "main" {`); none inside `( … )` and `[ … ]`, around `.`, after a unary `-`
//!   or `!` (but `- -1` stays apart), before `,` and `...`. Where no rule applies, the author's
//!   choice between "some whitespace" and "none" is kept, so a space that separates two tokens is
//!   never removed. A trailing comment is separated by exactly one space (comments are not aligned).
//! - Alignment: within a run of consecutive single-line attributes (or object items) at the same
//!   indentation, keys are padded so the `=` signs line up. As in `terraform fmt`, the run is
//!   broken by a blank line, a comment line, a block, and by an attribute whose value opens a
//!   multi-line bracket (`settings = {` is not padded). A value ending in a heredoc is aligned
//!   with the lines above it and ends the run.
//! - Blank lines: leading and trailing ones are removed, runs of blank lines become one, and there
//!   is none right after a line ending in an opening bracket or right before a closing one.
//! - Whitespace: trailing whitespace is removed (also inside comments, never inside heredocs) and
//!   the output ends with exactly one newline; a file without any token formats to "".
//! - Line endings: CRLF is normalised to LF everywhere, heredoc bodies included, so that a file
//!   checked out on Windows formats to the same bytes as on Unix. This is the only change that can
//!   alter a value (a heredoc's `\r\n` becomes `\n`).

use std::fmt::Write as _;

/// The one way formatting fails: the input is not valid HCL.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The source could not be parsed; `line` and `column` are one-based.
    #[error("invalid HCL at line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
}

/// Returns the canonical layout of an HCL source file.
///
/// The result is idempotent (`format_source(&format_source(x)?)? == format_source(x)?`) and
/// decodes to the same HCL body as `source`, up to CRLF line endings inside heredocs.
pub fn format_source(source: &str) -> Result<String, FormatError> {
    hcl::edit::parser::parse_body(source).map_err(|error| FormatError::Parse {
        line: error.location().line(),
        column: error.location().column(),
        message: error.message().to_owned(),
    })?;
    let source = source.replace("\r\n", "\n");
    let lines = tidy_lines(lex(&source));
    Ok(render(&lines))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bracket {
    Paren,
    Square,
    Brace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    /// A whole quoted template, `"…"`, interpolations included.
    QuotedString,
    /// A whole heredoc, from `<<EOT` up to and including its closing marker.
    Heredoc,
    /// `# …` or `// …`, without the line ending.
    LineComment,
    /// `/* … */`, which may span lines.
    BlockComment,
    Open(Bracket),
    Close(Bracket),
    Comma,
    Dot,
    Ellipsis,
    /// The `=` of an attribute or object item.
    Assign,
    /// Operators that are always binary: `== != < > <= >= && || + / % => ? :`.
    Binary,
    /// `-`, which is unary when it does not follow an operand.
    Minus {
        unary: bool,
    },
    /// `*`, which is a splat after `.` or `[`.
    Star {
        splat: bool,
    },
    /// `!`, always unary.
    Bang,
    /// Anything else; the parser accepted the file, so this is rare, and it is spaced as written.
    Other,
}

impl Kind {
    fn is_comment(self) -> bool {
        matches!(self, Kind::LineComment | Kind::BlockComment)
    }

    /// Whether the token can end an operand, which makes a following `-` binary.
    fn ends_operand(self) -> bool {
        matches!(
            self,
            Kind::Ident
                | Kind::Number
                | Kind::QuotedString
                | Kind::Heredoc
                | Kind::Close(_)
                | Kind::Star { splat: true }
        )
    }
}

#[derive(Debug, Clone)]
struct Token<'s> {
    kind: Kind,
    text: &'s str,
    /// Whether the source had whitespace between this token and the previous one on its line.
    space_before: bool,
}

impl Token<'_> {
    fn spans_lines(&self) -> bool {
        self.text.contains('\n')
    }
}

/// One source line: the tokens between two line endings that are not inside a token.
type Line<'s> = Vec<Token<'s>>;

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

fn first_char(text: &str) -> Option<char> {
    text.chars().next()
}

/// Splits LF-normalised source into lines of tokens.
fn lex(source: &str) -> Vec<Line<'_>> {
    let mut lines = vec![Vec::new()];
    let mut position = 0;
    let mut space_before = false;
    let mut last_code: Option<Kind> = None;
    while let Some(c) = first_char(&source[position..]) {
        match c {
            '\n' => {
                lines.push(Vec::new());
                space_before = false;
                position += 1;
            }
            ' ' | '\t' | '\r' => {
                space_before = true;
                position += 1;
            }
            _ => {
                let rest = &source[position..];
                let (kind, length) = scan_token(rest, last_code);
                // Every scanner consumes at least one character; this guards against a bug
                // turning into an endless loop.
                let length = length.max(c.len_utf8());
                if !kind.is_comment() {
                    last_code = Some(kind);
                }
                if let Some(line) = lines.last_mut() {
                    line.push(Token {
                        kind,
                        text: &rest[..length],
                        space_before,
                    });
                }
                space_before = false;
                position += length;
            }
        }
    }
    lines
}

/// Returns the kind and byte length of the token at the start of `rest`.
fn scan_token(rest: &str, last_code: Option<Kind>) -> (Kind, usize) {
    let starts = |prefix: &str| rest.starts_with(prefix);
    let Some(c) = first_char(rest) else {
        return (Kind::Other, 0);
    };
    match c {
        '#' => (Kind::LineComment, line_length(rest)),
        '/' if starts("//") => (Kind::LineComment, line_length(rest)),
        '/' if starts("/*") => {
            let length = rest[2..].find("*/").map_or(rest.len(), |end| end + 4);
            (Kind::BlockComment, length)
        }
        '"' => (Kind::QuotedString, scan_quoted(rest)),
        '<' if starts("<<") => match scan_heredoc(rest) {
            Some(length) => (Kind::Heredoc, length),
            None => (Kind::Binary, 1),
        },
        '0'..='9' => (Kind::Number, scan_number(rest)),
        c if is_ident_start(c) => (Kind::Ident, scan_ident(rest)),
        '(' => (Kind::Open(Bracket::Paren), 1),
        '[' => (Kind::Open(Bracket::Square), 1),
        '{' => (Kind::Open(Bracket::Brace), 1),
        ')' => (Kind::Close(Bracket::Paren), 1),
        ']' => (Kind::Close(Bracket::Square), 1),
        '}' => (Kind::Close(Bracket::Brace), 1),
        ',' => (Kind::Comma, 1),
        '.' if starts("...") => (Kind::Ellipsis, 3),
        '.' => (Kind::Dot, 1),
        '=' if starts("==") || starts("=>") => (Kind::Binary, 2),
        '=' => (Kind::Assign, 1),
        '!' if starts("!=") => (Kind::Binary, 2),
        '!' => (Kind::Bang, 1),
        '<' | '>' if rest[1..].starts_with('=') => (Kind::Binary, 2),
        '&' if starts("&&") => (Kind::Binary, 2),
        '|' if starts("||") => (Kind::Binary, 2),
        '<' | '>' | '+' | '/' | '%' | '?' | ':' => (Kind::Binary, 1),
        '-' => {
            let unary = !last_code.is_some_and(Kind::ends_operand);
            (Kind::Minus { unary }, 1)
        }
        '*' => {
            let splat = matches!(last_code, Some(Kind::Dot | Kind::Open(Bracket::Square)));
            (Kind::Star { splat }, 1)
        }
        other => (Kind::Other, other.len_utf8()),
    }
}

fn line_length(rest: &str) -> usize {
    rest.find('\n').unwrap_or(rest.len())
}

fn scan_ident(rest: &str) -> usize {
    rest.char_indices()
        .find(|&(index, c)| index > 0 && !is_ident_continue(c))
        .map_or(rest.len(), |(index, _)| index)
}

fn count_digits(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

fn scan_number(rest: &str) -> usize {
    let mut length = count_digits(rest);
    let after = &rest[length..];
    if after.starts_with('.') && count_digits(&after[1..]) > 0 {
        length += 1 + count_digits(&after[1..]);
    }
    let after = &rest[length..];
    if after.starts_with(['e', 'E']) {
        let sign = usize::from(after[1..].starts_with(['+', '-']));
        let digits = count_digits(&after[1 + sign..]);
        if digits > 0 {
            length += 1 + sign + digits;
        }
    }
    length
}

/// Length of the quoted template at the start of `rest` (which starts with `"`).
fn scan_quoted(rest: &str) -> usize {
    let mut index = 1;
    while let Some(c) = first_char(&rest[index..]) {
        let here = &rest[index..];
        if c == '\\' {
            index += 1 + first_char(&here[1..]).map_or(0, char::len_utf8);
        } else if c == '"' {
            return index + 1;
        } else if c == '\n' {
            // A quoted template cannot contain a line ending; stop rather than swallow the file.
            return index;
        } else if here.starts_with("$${") || here.starts_with("%%{") {
            index += 3;
        } else if here.starts_with("${") || here.starts_with("%{") {
            index = skip_interpolation(rest, index + 2);
        } else {
            index += c.len_utf8();
        }
    }
    rest.len()
}

/// Returns the index just after the `}` closing the interpolation whose body starts at `index`.
fn skip_interpolation(text: &str, mut index: usize) -> usize {
    let mut depth = 1;
    while let Some(c) = first_char(&text[index..]) {
        let here = &text[index..];
        match c {
            '"' => index += scan_quoted(here),
            '<' if here.starts_with("<<") => index += scan_heredoc(here).unwrap_or(2),
            '{' => {
                depth += 1;
                index += 1;
            }
            '}' => {
                depth -= 1;
                index += 1;
                if depth == 0 {
                    return index;
                }
            }
            _ => index += c.len_utf8(),
        }
    }
    text.len()
}

/// Length of the heredoc at the start of `rest` (which starts with `<<`), up to and including
/// its closing marker, or `None` if this is not a heredoc opener.
fn scan_heredoc(rest: &str) -> Option<usize> {
    let mut index = 2;
    if rest[index..].starts_with('-') {
        index += 1;
    }
    let marker_start = index;
    if !first_char(&rest[index..]).is_some_and(is_ident_start) {
        return None;
    }
    index += scan_ident(&rest[index..]);
    let marker = &rest[marker_start..index];
    if !rest[index..].starts_with('\n') {
        return None;
    }
    index += 1;
    loop {
        // At the start of a body line: is this the closing marker?
        let indentation = rest[index..]
            .bytes()
            .take_while(|&b| b == b' ' || b == b'\t')
            .count();
        let candidate = &rest[index + indentation..];
        if candidate.starts_with(marker)
            && !first_char(&candidate[marker.len()..]).is_some_and(is_ident_continue)
        {
            return Some(index + indentation + marker.len());
        }
        // Otherwise skip the line, interpolations included (they may span lines).
        loop {
            let here = &rest[index..];
            match first_char(here) {
                None => return Some(rest.len()),
                Some('\n') => {
                    index += 1;
                    break;
                }
                Some(_) if here.starts_with("$${") || here.starts_with("%%{") => index += 3,
                Some(_) if here.starts_with("${") || here.starts_with("%{") => {
                    index = skip_interpolation(rest, index + 2);
                }
                Some(c) => index += c.len_utf8(),
            }
        }
    }
}

fn last_code_token<'a, 's>(line: &'a [Token<'s>]) -> Option<&'a Token<'s>> {
    line.iter().rev().find(|token| !token.kind.is_comment())
}

fn ends_with_open(line: &[Token<'_>]) -> bool {
    last_code_token(line).is_some_and(|token| matches!(token.kind, Kind::Open(_)))
}

fn starts_with_close(line: &[Token<'_>]) -> bool {
    line.first()
        .is_some_and(|token| matches!(token.kind, Kind::Close(_)))
}

/// Applies the blank-line rules and collapses empty bracket pairs spread over lines.
fn tidy_lines(lines: Vec<Line<'_>>) -> Vec<Line<'_>> {
    let mut tidy: Vec<Line<'_>> = Vec::with_capacity(lines.len());
    for mut line in lines {
        if line.is_empty() {
            let keep = tidy
                .last()
                .is_some_and(|previous| !previous.is_empty() && !ends_with_open(previous));
            if keep {
                tidy.push(line);
            }
            continue;
        }
        if starts_with_close(&line) && tidy.last().is_some_and(Vec::is_empty) {
            tidy.pop();
        }
        if let Some(previous) = tidy.last_mut() {
            let previous_ends_with_open = previous
                .last()
                .is_some_and(|token| matches!(token.kind, Kind::Open(_)));
            if previous_ends_with_open && starts_with_close(&line) {
                line[0].space_before = false;
                previous.append(&mut line);
                continue;
            }
        }
        tidy.push(line);
    }
    while tidy.last().is_some_and(Vec::is_empty) {
        tidy.pop();
    }
    tidy
}

/// The whitespace between two tokens on the same line.
fn spacing(previous: Kind, next: &Token<'_>) -> &'static str {
    use Kind::*;
    let as_written = if next.space_before { " " } else { "" };
    match (previous, next.kind) {
        (_, LineComment) => " ",
        (BlockComment | Other, _) | (_, BlockComment | Other) => as_written,
        (_, Comma) => "",
        (Open(Bracket::Paren | Bracket::Square), _) => "",
        (_, Close(Bracket::Paren | Bracket::Square)) => "",
        (Comma, _) => " ",
        (Open(Bracket::Brace), Close(Bracket::Brace)) => "",
        (Open(Bracket::Brace), _) | (_, Close(Bracket::Brace)) => " ",
        // A number followed by `.` or `...` could merge into a decimal number.
        (Number, Dot | Ellipsis) => as_written,
        (_, Ellipsis) => "",
        (Dot, _) | (_, Dot) => "",
        (Star { splat: true }, _) | (_, Star { splat: true }) => "",
        // `- -1` stays apart; `--1` would read like a decrement.
        (Minus { unary: true }, Minus { .. }) => as_written,
        (Minus { unary: true } | Bang, _) => "",
        (Assign | Binary | Minus { unary: false } | Star { splat: false }, _) => " ",
        (_, Assign | Binary | Minus { unary: false } | Star { splat: false }) => " ",
        // Block headers (`postgres "main" {`) and keywords of `for` expressions.
        (Ident | QuotedString | Number | Close(_), Ident | QuotedString | Number) => " ",
        (Ident | QuotedString, Open(Bracket::Brace)) => " ",
        _ => as_written,
    }
}

fn push_token(out: &mut String, token: &Token<'_>) {
    match token.kind {
        Kind::LineComment => out.push_str(token.text.trim_end()),
        Kind::BlockComment => {
            for (index, part) in token.text.split('\n').enumerate() {
                if index > 0 {
                    out.push('\n');
                }
                out.push_str(part.trim_end());
            }
        }
        _ => out.push_str(token.text),
    }
}

/// Renders tokens with canonical spacing; the first token gets no leading space.
fn render_tokens(tokens: &[Token<'_>]) -> String {
    let mut out = String::new();
    let mut previous: Option<Kind> = None;
    for token in tokens {
        if let Some(previous) = previous {
            out.push_str(spacing(previous, token));
        }
        push_token(&mut out, token);
        previous = Some(token.kind);
    }
    out
}

/// Where a line is `key = value` with a value that is complete on this line.
struct Assignment {
    /// Index of the `=` token.
    equals: usize,
    /// Whether the line contains a token spanning lines (a heredoc), which ends an alignment run.
    ends_run: bool,
}

fn find_assignment(line: &[Token<'_>]) -> Option<Assignment> {
    let mut depth = 0usize;
    let mut equals = None;
    for (index, token) in line.iter().enumerate() {
        match token.kind {
            Kind::Open(_) => depth += 1,
            Kind::Close(_) => depth = depth.checked_sub(1)?,
            Kind::Assign if depth == 0 && index > 0 => {
                equals = Some(index);
                break;
            }
            _ => {}
        }
    }
    let equals = equals?;
    // A key spanning lines cannot be padded.
    if line[..equals].iter().any(Token::spans_lines) {
        return None;
    }
    // A value that opens a bracket it does not close is a multi-line attribute: not aligned.
    let mut net = 0isize;
    for token in &line[equals + 1..] {
        match token.kind {
            Kind::Open(_) => net += 1,
            Kind::Close(_) => net -= 1,
            _ => {}
        }
    }
    (net == 0).then(|| Assignment {
        equals,
        ends_run: line[equals + 1..].iter().any(Token::spans_lines),
    })
}

struct Rendered {
    indent: usize,
    /// For an alignable line, the key part and the value part; otherwise the whole line.
    key: String,
    value: Option<String>,
    ends_run: bool,
}

/// Indentation of each line, from the brackets left open by the lines before it.
fn indentation(lines: &[Line<'_>]) -> Vec<usize> {
    // For each open bracket, the indentation of the line that opened it.
    let mut open: Vec<usize> = Vec::new();
    let mut levels = Vec::with_capacity(lines.len());
    for line in lines {
        let level = if starts_with_close(line) {
            open.last().copied().unwrap_or(0)
        } else {
            open.last().map_or(0, |opener| opener + 1)
        };
        for token in line {
            match token.kind {
                Kind::Open(_) => open.push(level),
                Kind::Close(_) => {
                    open.pop();
                }
                _ => {}
            }
        }
        levels.push(level);
    }
    levels
}

fn render(lines: &[Line<'_>]) -> String {
    let rendered: Vec<Option<Rendered>> = lines
        .iter()
        .zip(indentation(lines))
        .map(|(line, indent)| {
            if line.is_empty() {
                return None;
            }
            Some(match find_assignment(line) {
                Some(assignment) => Rendered {
                    indent,
                    key: render_tokens(&line[..assignment.equals]),
                    value: Some(render_tokens(&line[assignment.equals + 1..])),
                    ends_run: assignment.ends_run,
                },
                None => Rendered {
                    indent,
                    key: render_tokens(line),
                    value: None,
                    ends_run: true,
                },
            })
        })
        .collect();

    let widths = alignment_widths(&rendered);
    let mut out = String::new();
    for (line, width) in rendered.iter().zip(widths) {
        if let Some(line) = line {
            out.push_str(&"  ".repeat(line.indent));
            out.push_str(&line.key);
            if let Some(value) = &line.value {
                let padding = width.saturating_sub(line.key.chars().count());
                let _ = write!(out, "{:padding$} =", "");
                if !value.is_empty() {
                    out.push(' ');
                    out.push_str(value);
                }
            }
        }
        out.push('\n');
    }
    if out.trim().is_empty() {
        return String::new();
    }
    out
}

/// For each line, the key width its `=` is aligned to (0 for lines that are not assignments).
fn alignment_widths(lines: &[Option<Rendered>]) -> Vec<usize> {
    let mut widths = vec![0; lines.len()];
    let mut start = 0;
    while start < lines.len() {
        let Some(first) = lines[start].as_ref().filter(|line| line.value.is_some()) else {
            start += 1;
            continue;
        };
        let mut end = start + 1;
        let mut previous_ends_run = first.ends_run;
        while end < lines.len() && !previous_ends_run {
            match &lines[end] {
                Some(line) if line.value.is_some() && line.indent == first.indent => {
                    previous_ends_run = line.ends_run;
                    end += 1;
                }
                _ => break,
            }
        }
        let width = lines[start..end]
            .iter()
            .flatten()
            .map(|line| line.key.chars().count())
            .max()
            .unwrap_or(0);
        widths[start..end].fill(width);
        start = end;
    }
    widths
}
