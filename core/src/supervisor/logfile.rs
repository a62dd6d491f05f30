//! Reading a supervised process's log: the tail that errors quote, and the scanner behind the `log_line` probe.
//!
//! A log collects every run of its process (the file is appended to, never truncated, so that `kip logs` shows
//! what happened before a crash). Both readers therefore start at the offset the file had when the current run
//! was spawned: an error quotes what this run said, and a `log_line` probe never passes on a line an earlier run
//! wrote.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use regex_lite::Regex;

/// How many lines an error quotes.
pub(super) const TAIL_LINES: usize = 20;
/// How much of the end of a log is read to find those lines.
const TAIL_WINDOW: u64 = 64 * 1024;
/// A quoted line longer than this is cut (a binary blob or a minified JSON line is no help in an error).
const MAX_QUOTED_LINE: usize = 400;
/// How much of the log a single `log_line` check reads.
const SCAN_CHUNK: u64 = 1024 * 1024;

/// The last [`TAIL_LINES`] lines of `path` written at or after `offset` (fewer if the run wrote fewer; none if the
/// file cannot be read).
pub fn tail(path: &Path, offset: u64) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let Ok(length) = file.metadata().map(|metadata| metadata.len()) else {
        return Vec::new();
    };
    // A log that shrank was truncated or replaced behind kip's back: everything in it is from this run.
    let offset = if length < offset { 0 } else { offset };
    let start = offset.max(length.saturating_sub(TAIL_WINDOW));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > offset && !lines.is_empty() {
        // The window starts in the middle of a line.
        lines.remove(0);
    }
    let first = lines.len().saturating_sub(TAIL_LINES);
    lines[first..]
        .iter()
        .map(|line| {
            let line = line.trim_end_matches('\r');
            match line.char_indices().nth(MAX_QUOTED_LINE) {
                Some((cut, _)) => format!("{}…", &line[..cut]),
                None => line.to_owned(),
            }
        })
        .collect()
}

/// Looks for a line matching a pattern among the lines appended to a log since an offset, remembering how far it
/// read so that each check reads only what is new.
pub(super) struct LogScanner {
    path: PathBuf,
    regex: Regex,
    offset: u64,
}

impl LogScanner {
    pub(super) fn new(path: PathBuf, regex: Regex, offset: u64) -> LogScanner {
        LogScanner {
            path,
            regex,
            offset,
        }
    }

    /// Whether a line written since the last check (or since the start offset) matches. A last line without its
    /// newline yet is tested too, and read again at the next check.
    pub(super) fn check(&mut self) -> Result<(), String> {
        let no_match = || {
            format!(
                "no line written to {} since the start matches /{}/",
                self.path.display(),
                self.regex
            )
        };
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(error) => return Err(format!("cannot read {}: {error}", self.path.display())),
        };
        let length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        if length < self.offset {
            self.offset = 0;
        }
        if length == self.offset {
            return Err(no_match());
        }
        let mut bytes = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.offset))
            .and_then(|_| (&mut file).take(SCAN_CHUNK).read_to_end(&mut bytes));
        if let Err(error) = read {
            return Err(format!("cannot read {}: {error}", self.path.display()));
        }
        let mut consumed = 0;
        while let Some(end) = bytes[consumed..].iter().position(|&byte| byte == b'\n') {
            let line = String::from_utf8_lossy(&bytes[consumed..consumed + end]);
            if self.regex.is_match(&line) {
                return Ok(());
            }
            consumed += end + 1;
        }
        if consumed < bytes.len()
            && self
                .regex
                .is_match(&String::from_utf8_lossy(&bytes[consumed..]))
        {
            return Ok(());
        }
        if consumed == 0 && bytes.len() as u64 == SCAN_CHUNK {
            // A whole chunk without a newline: skip it rather than read it again forever.
            consumed = bytes.len();
        }
        self.offset += consumed as u64;
        Err(no_match())
    }
}
