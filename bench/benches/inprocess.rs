//! In-process timings with divan: kip's front half (decode, check, graph) of generated configurations of 1,000 and
//! 10,000 objects, and the evaluation of a chain of 10,000 locals. `cargo bench -p kip-bench --bench inprocess`;
//! `scripts/bench.sh` runs it and puts its rows in the report.

#[path = "../src/generate.rs"]
mod generate;

use std::path::Path;

use kip_core::config::{CheckOptions, check_sources};

fn main() {
    divan::main();
}

fn options() -> CheckOptions<'static> {
    CheckOptions {
        registry: kip_registry::embedded().expect("the embedded registry verifies"),
        vars: Vec::new(),
        env_vars: Vec::new(),
        extra_engines: Vec::new(),
        runnable: None,
    }
}

/// Times `check_sources` of `files`, a fresh copy of the sources for each sample (checking consumes them).
fn check_each(bencher: divan::Bencher, files: &[(String, String)]) {
    let options = options();
    bencher
        .with_inputs(|| generate::sources(files))
        .bench_local_values(|sources| {
            let checked = check_sources(Path::new("."), sources, &options);
            assert!(
                !checked.diagnostics.has_errors(),
                "{:?}",
                checked.diagnostics
            );
            checked
        });
}

/// Decode, check and graph of a generated configuration with about `objects` graph nodes.
#[divan::bench(args = [1_000, 10_000], sample_count = 20)]
fn front_half(bencher: divan::Bencher, objects: usize) {
    check_each(bencher, &generate::generate(objects));
}

/// `locals` settled in dependency order: a chain declared backwards, 1,000 and 10,000 long (linear, not quadratic).
#[divan::bench(args = [1_000, 10_000], sample_count = 10)]
fn locals_chain(bencher: divan::Bencher, length: usize) {
    check_each(bencher, &generate::locals_chain(length));
}
