//! kip's benchmarks. Each one prints the median (and min / max) of repeated runs for a target an issue names;
//! BENCHMARKS.md records the numbers and what bounds them.
//!
//! Run: `cargo run --release -p kip-bench -- [front-half] [--runs N]`.

use std::path::Path;
use std::time::{Duration, Instant};

use kip_core::config::{CheckOptions, check_sources};
use kip_core::source::{SourceFile, Sources};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|arg| arg == "--runs")
        .and_then(|at| args.get(at + 1))
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(21);
    let selected: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let wants = |name: &str| selected.is_empty() || selected.contains(&name);
    if wants("front-half") {
        front_half(runs);
    }
}

/// A generated configuration with about `objects` graph nodes: PostgreSQL instances with roles, databases and
/// grants, Valkey instances with ACL users, and processes that reference databases, spread over several files.
pub fn generate(objects: usize) -> Vec<(String, String)> {
    let per_instance = 50;
    let instances = objects.div_ceil(per_instance + 1);
    let mut files = Vec::new();
    let mut main = String::from(
        "variable \"pg_version\" {\n  default = \"16\"\n}\n\nlocals {\n  owner = \"app0\"\n}\n\n",
    );
    let mut produced = 0;
    for index in 0..instances {
        let mut text = String::new();
        if index % 5 == 4 {
            text.push_str(&format!(
                "valkey \"cache{index}\" {{\n  version   = \"9\"\n  maxmemory = \"64mb\"\n"
            ));
            produced += 1;
            for user in 0..per_instance {
                if produced >= objects {
                    break;
                }
                text.push_str(&format!(
                    "  user \"u{user}\" {{\n    commands = [\"+@read\"]\n  }}\n"
                ));
                produced += 1;
            }
        } else {
            text.push_str(&format!(
                "postgres \"pg{index}\" {{\n  version  = var.pg_version\n  settings = {{ work_mem = \"8MB\" }}\n"
            ));
            produced += 1;
            for object in 0..per_instance {
                if produced >= objects {
                    break;
                }
                match object % 3 {
                    0 => text.push_str(&format!("  role \"app{object}\" {{\n    login = true\n  }}\n")),
                    1 => text.push_str(&format!(
                        "  database \"db{object}\" {{\n    owner      = local.owner\n    extensions = [\"pgcrypto\"]\n  }}\n"
                    )),
                    _ => text.push_str(&format!(
                        "  grant {{\n    role       = \"app{}\"\n    database   = \"db{}\"\n    privileges = [\"ALL\"]\n  }}\n",
                        object - 2,
                        object - 1
                    )),
                }
                produced += 1;
            }
        }
        text.push_str("}\n\n");
        if index % 5 == 3 && produced < objects {
            text.push_str(&format!(
                "process \"web{index}\" {{\n  command = [\"./web\"]\n  env     = {{ DATABASE_URL = postgres.pg{index}.database.db1.url }}\n}}\n\n"
            ));
            produced += 1;
        }
        if index % 20 == 19 {
            files.push((format!("part{index}.kip.hcl"), std::mem::take(&mut main)));
        }
        main.push_str(&text);
    }
    files.push(("kip.hcl".to_owned(), main));
    files
}

fn sources(files: &[(String, String)]) -> Sources {
    let mut sources = Sources::default();
    for (name, text) in files {
        sources.add(SourceFile::new(name.clone(), name.into(), text.clone()));
    }
    sources
}

fn front_half(runs: usize) {
    let registry = kip_registry::embedded().expect("the embedded registry verifies");
    println!("front half: decode + check + graph (in memory; {runs} runs each)");
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "objects", "nodes", "median", "min", "max", "per node"
    );
    for objects in [1_000, 10_000] {
        let files = generate(objects);
        let options = CheckOptions {
            registry,
            vars: Vec::new(),
            env_vars: Vec::new(),
        };
        let mut times = Vec::with_capacity(runs);
        let mut nodes = 0;
        for _ in 0..runs {
            let sources = sources(&files);
            let started = Instant::now();
            let checked = check_sources(Path::new("."), sources, &options);
            times.push(started.elapsed());
            assert!(
                !checked.diagnostics.has_errors(),
                "the generated config is valid: {:?}",
                checked.diagnostics
            );
            nodes = checked.graph.as_ref().map_or(0, |graph| graph.len());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{objects:>8} {nodes:>8} {:>10} {:>10} {:>10} {:>12}",
            millis(median),
            millis(times[0]),
            millis(times[times.len() - 1]),
            format!("{:.2} µs", median.as_secs_f64() * 1e6 / nodes.max(1) as f64)
        );
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}
