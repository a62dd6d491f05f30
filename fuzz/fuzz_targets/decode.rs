//! Fuzzes the whole front half (parse, decode, check, graph) with arbitrary file contents: it must never panic,
//! whatever the input. Run: `cargo +nightly fuzz run decode` from the repository root.
#![no_main]

use std::path::Path;

use kip_core::config::{check_sources, CheckOptions};
use kip_core::source::{SourceFile, Sources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let registry = kip_registry::embedded().expect("the embedded registry verifies");
    let options = CheckOptions { registry, vars: Vec::new(), env_vars: Vec::new(), extra_engines: Vec::new(), runnable: None };
    let mut sources = Sources::default();
    sources.add(SourceFile::new("kip.hcl".into(), "kip.hcl".into(), text.to_owned()));
    let checked = check_sources(Path::new("."), sources, &options);
    // Rendering positions must work for every diagnostic, too.
    for diagnostic in checked.diagnostics.iter() {
        let _ = diagnostic.resolve(&checked.sources);
    }
});
