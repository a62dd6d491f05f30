//! Generated configurations for the in-process benchmarks (kip-bench's front half and the divan benches in
//! benches/inprocess.rs, which include this file).

use kip_core::source::{SourceFile, Sources};

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

pub fn sources(files: &[(String, String)]) -> Sources {
    let mut sources = Sources::default();
    for (name, text) in files {
        sources.add(SourceFile::new(name.clone(), name.into(), text.clone()));
    }
    sources
}

/// A chain of `length` locals, declared backwards (`l{n} = local.l{n-1} + 1`, …, `l0 = 1`): each settles only
/// after the one it reads, the worst order for a pass that settles locals in rounds.
pub fn locals_chain(length: usize) -> Vec<(String, String)> {
    let mut text = String::from("locals {\n");
    for index in (1..length).rev() {
        text.push_str(&format!("  l{index} = local.l{} + 1\n", index - 1));
    }
    text.push_str("  l0 = 1\n}\n");
    vec![("kip.hcl".to_owned(), text)]
}
