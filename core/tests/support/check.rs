//! A configuration checked from text, as `kip lint` checks `kip.hcl`, with the embedded registry.

use std::path::Path;

use kip_core::config::{CheckOptions, Checked, check_sources};
use kip_core::source::{SourceFile, Sources};

/// Checks `text` as the one file `kip.hcl` of a project in the current directory.
pub fn check(text: &str) -> Checked {
    let registry = kip_registry::embedded().expect("the embedded registry verifies");
    let options = CheckOptions {
        registry,
        vars: Vec::new(),
        env_vars: Vec::new(),
        extra_engines: Vec::new(),
        runnable: None,
    };
    let mut sources = Sources::default();
    sources.add(SourceFile::new(
        "kip.hcl".into(),
        "kip.hcl".into(),
        text.to_owned(),
    ));
    check_sources(Path::new("."), sources, &options)
}
