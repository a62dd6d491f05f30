//! Well-formedness of every engine schema kip ships, plus spot checks of the values users rely on.
//!
//! A schema mistake (a default of the wrong type, a `since` outside the engine's majors, two arguments with
//! one name) would surface as a confusing diagnostic or a wrong doc page, so the whole tree is walked here.

use kip_schemas::{
    BlockSchema, EngineSchema, Shape, ValueType, Version, did_you_mean, engine, engines,
};

/// Calls `visit` on every block of `engine` with its path (`postgres > database > schema`).
fn walk<'a>(
    block: &'a BlockSchema,
    path: &mut Vec<&'a str>,
    visit: &mut dyn FnMut(&[&str], &'a BlockSchema),
) {
    path.push(block.name);
    visit(path, block);
    for child in &block.blocks {
        walk(child, path, visit);
    }
    path.pop();
}

fn each_block(engine: &'static EngineSchema, mut visit: impl FnMut(&[&str], &'static BlockSchema)) {
    walk(&engine.instance, &mut Vec::new(), &mut visit);
}

fn is_snake_case(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        && name.as_bytes()[0].is_ascii_lowercase()
}

#[test]
fn engines_in_stable_order_and_found_by_name() {
    let names: Vec<&str> = engines().iter().map(|engine| engine.name).collect();
    assert_eq!(
        names,
        ["postgres", "valkey", "mariadb", "nats", "s3", "process"]
    );
    for name in names {
        assert_eq!(engine(name).map(|engine| engine.name), Some(name));
    }
    assert!(engine("redis").is_none());
    assert!(engine("Postgres").is_none());
    // The same static data every time.
    assert!(std::ptr::eq(engines(), engines()));
    assert_eq!(
        did_you_mean("postgress", engines().iter().map(|engine| engine.name)),
        Some("postgres")
    );
}

#[test]
fn majors() {
    let majors = |name: &str| engine(name).expect(name).majors.clone();
    assert_eq!(majors("postgres"), [14, 15, 16, 17, 18]);
    assert_eq!(majors("valkey"), [8, 9]);
    assert_eq!(majors("mariadb"), [10]);
    assert_eq!(majors("nats"), [2]);
    assert_eq!(majors("s3"), [4]);
    assert!(majors("process").is_empty());
    for engine in engines() {
        let mut sorted = engine.majors.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted, engine.majors,
            "{}: majors sorted and unique",
            engine.name
        );
        assert_eq!(
            engine.versioned,
            !engine.majors.is_empty(),
            "{}: versioned iff it has majors",
            engine.name
        );
    }
}

#[test]
fn instance_blocks() {
    for engine in engines() {
        let instance = &engine.instance;
        assert_eq!(instance.name, engine.name);
        assert_eq!(instance.labels, ["name"], "{}", engine.name);
        assert!(
            instance.object && instance.repeatable,
            "{}: instances are repeatable objects",
            engine.name
        );
        assert!(instance.since.is_none(), "{}", engine.name);
        match instance.argument("version") {
            Some(version) => {
                assert!(
                    engine.versioned,
                    "{} is unversioned but has `version`",
                    engine.name
                );
                assert!(version.required, "{}: version is required", engine.name);
                assert_eq!(
                    version.ty,
                    ValueType::Scalar,
                    "{}: `version = 16` must be accepted",
                    engine.name
                );
            }
            None => assert!(
                !engine.versioned,
                "{} is versioned but has no `version`",
                engine.name
            ),
        }
        for meta in [
            "count",
            "for_each",
            "depends_on",
            "run_as",
            "prevent_destroy",
        ] {
            assert!(
                instance.argument(meta).is_none(),
                "{}: meta-argument {meta} is the core's",
                engine.name
            );
        }
    }
}

#[test]
fn names_are_unique_and_snake_case() {
    for engine in engines() {
        each_block(engine, |path, block| {
            let mut names: Vec<&str> = block
                .arguments
                .iter()
                .map(|argument| argument.name)
                .collect();
            names.extend(block.blocks.iter().map(|child| child.name));
            for name in &names {
                assert!(is_snake_case(name), "{path:?}: {name:?} is not snake_case");
                assert_eq!(
                    names.iter().filter(|other| *other == name).count(),
                    1,
                    "{path:?}: {name} is declared twice"
                );
            }
            let exports: Vec<&str> = block.exports.iter().map(|export| export.name).collect();
            for name in &exports {
                assert!(is_snake_case(name), "{path:?}: export {name:?}");
                // `mariadb.main.user.app.url` reads the `user` block; an export called `user` would hide it.
                assert!(
                    !block.blocks.iter().any(|child| child.name == *name),
                    "{path:?}: export {name} has the name of a nested block, which references could not reach"
                );
                assert_eq!(
                    exports.iter().filter(|other| *other == name).count(),
                    1,
                    "{path:?}: export {name} twice"
                );
            }
            for label in &block.labels {
                assert!(is_snake_case(label), "{path:?}: label {label:?}");
            }
        });
    }
}

#[test]
fn defaults_fit_their_types_and_required_arguments_have_none() {
    let mut defaults_seen = 0;
    for engine in engines() {
        each_block(engine, |path, block| {
            for argument in &block.arguments {
                let Some(default) = &argument.default else {
                    continue;
                };
                defaults_seen += 1;
                assert!(
                    !argument.required,
                    "{path:?}.{}: required with a default",
                    argument.name
                );
                let shape = Shape::from_json(default);
                assert_ne!(
                    shape,
                    Shape::Null,
                    "{path:?}.{}: a null default is no default",
                    argument.name
                );
                assert_eq!(
                    argument.ty.check(&shape),
                    Ok(()),
                    "{path:?}.{}: default {default} is not a {}",
                    argument.name,
                    argument.ty
                );
                assert!(
                    !argument.sensitive,
                    "{path:?}.{}: a sensitive default would be public",
                    argument.name
                );
            }
        });
    }
    assert!(
        defaults_seen > 30,
        "only {defaults_seen} defaults: the walk is not visiting blocks"
    );
}

#[test]
fn since_gates_fall_within_the_engine_majors() {
    for engine in engines() {
        let first = engine.majors.first().copied();
        let last = engine.majors.last().copied();
        let within = |path: &[&str], what: &str, since: &Version| {
            assert!(
                engine.versioned,
                "{path:?}.{what}: `since` on an unversioned engine"
            );
            let (first, last) = (first.expect("majors"), last.expect("majors"));
            // A gate at or below the oldest major would never fire: it is dead weight.
            assert!(
                since.major > first && since.major <= last,
                "{path:?}.{what}: since {since} outside {first}..={last}"
            );
        };
        each_block(engine, |path, block| {
            if let Some(since) = &block.since {
                within(path, block.name, since);
            }
            for argument in &block.arguments {
                if let Some(since) = &argument.since {
                    within(path, argument.name, since);
                }
            }
        });
    }
}

#[test]
fn every_item_is_documented_in_table_friendly_text() {
    for engine in engines() {
        assert!(
            engine.doc.len() > 80,
            "{}: engine doc too thin",
            engine.name
        );
        assert!(!engine.summary().is_empty() && !engine.summary().contains('\n'));
        each_block(engine, |path, block| {
            assert!(!block.doc.trim().is_empty(), "{path:?}: block doc");
            assert_eq!(
                block.doc,
                block.doc.trim(),
                "{path:?}: block doc has stray whitespace"
            );
            for argument in &block.arguments {
                let doc = argument.doc;
                assert!(doc.len() > 10, "{path:?}.{}: doc too thin", argument.name);
                assert!(
                    !doc.contains('\n') && !doc.contains('|'),
                    "{path:?}.{}: doc must fit a table row",
                    argument.name
                );
                assert!(
                    doc.ends_with('.'),
                    "{path:?}.{}: doc should be a sentence",
                    argument.name
                );
            }
            for export in &block.exports {
                assert!(
                    export.doc.ends_with('.') && !export.doc.contains('\n'),
                    "{path:?} export {}",
                    export.name
                );
            }
        });
    }
}

#[test]
fn secrets_are_sensitive() {
    for engine in engines() {
        each_block(engine, |path, block| {
            for argument in &block.arguments {
                let secret = ["password", "secret", "token"]
                    .iter()
                    .any(|word| argument.name.contains(word));
                assert_eq!(argument.sensitive, secret, "{path:?}.{}", argument.name);
            }
            for export in &block.exports {
                if ["password", "secret", "token"]
                    .iter()
                    .any(|word| export.name.contains(word))
                {
                    assert!(export.sensitive, "{path:?} export {}", export.name);
                }
            }
        });
    }
}

#[test]
fn exactly_one_of_groups_name_optional_arguments() {
    let mut groups = 0;
    for engine in engines() {
        each_block(engine, |path, block| {
            for group in &block.exactly_one_of {
                groups += 1;
                assert!(
                    group.len() >= 2,
                    "{path:?}: a group of one is just a required argument"
                );
                for name in group {
                    let argument = block
                        .argument(name)
                        .unwrap_or_else(|| panic!("{path:?}: {name} in a group"));
                    assert!(
                        !argument.required,
                        "{path:?}.{name}: in a group and required"
                    );
                }
            }
        });
    }
    assert_eq!(groups, 1, "only process.ready has a group today");
}

#[test]
fn objects_and_config_blocks() {
    for engine in engines() {
        each_block(engine, |path, block| {
            if !block.labels.is_empty() && block.object {
                assert!(
                    block.repeatable,
                    "{path:?}: a named object is declared once per name"
                );
            }
            if !block.object {
                assert!(
                    block.exports.is_empty(),
                    "{path:?}: only objects can be referenced"
                );
            }
        });
    }
}

#[test]
fn spot_checks() {
    let postgres = &engine("postgres").expect("postgres").instance;
    let io_method = postgres.argument("io_method").expect("io_method");
    assert_eq!(io_method.since, Some(Version::from_major(18)));
    assert_eq!(
        io_method.ty,
        ValueType::Enum(vec!["sync", "worker", "io_uring"])
    );
    assert_eq!(
        postgres
            .argument("superuser")
            .and_then(|a| a.default.clone()),
        Some("postgres".into())
    );
    assert_eq!(
        postgres
            .argument("encoding")
            .and_then(|a| a.default.clone()),
        Some("UTF8".into())
    );
    assert!(postgres.argument("password").expect("password").sensitive);
    assert_eq!(
        postgres
            .argument("settings")
            .expect("settings")
            .ty
            .to_string(),
        "map(scalar)"
    );
    let exports: Vec<&str> = postgres.exports.iter().map(|export| export.name).collect();
    assert_eq!(
        exports,
        ["url", "host", "port", "socket", "user", "password"]
    );
    let role = postgres.block("role").expect("role");
    assert_eq!(
        role.argument("login").and_then(|a| a.default.clone()),
        Some(false.into())
    );
    let database = postgres.block("database").expect("database");
    assert!(
        database
            .argument("lc_collate")
            .expect("lc_collate")
            .forces_replacement
    );
    assert!(
        database
            .block("schema")
            .expect("nested schema")
            .argument("database")
            .is_none()
    );
    assert!(
        postgres
            .block("schema")
            .expect("instance schema")
            .argument("database")
            .expect("database")
            .required
    );
    assert!(database.block("extension").is_some());
    let grant = postgres.block("grant").expect("grant");
    assert!(grant.labels.is_empty() && grant.repeatable && grant.object);
    assert!(
        grant.argument("role").expect("role").required
            && grant.argument("privileges").expect("privileges").required
    );

    let valkey = &engine("valkey").expect("valkey").instance;
    assert_eq!(
        valkey.argument("maxmemory").expect("maxmemory").ty,
        ValueType::Size
    );
    assert_eq!(
        valkey
            .block("user")
            .expect("user")
            .argument("commands")
            .expect("commands")
            .ty
            .to_string(),
        "list(string)"
    );

    let mariadb = &engine("mariadb").expect("mariadb").instance;
    let user = mariadb.block("user").expect("user");
    assert_eq!(
        user.argument("host").and_then(|a| a.default.clone()),
        Some("localhost".into())
    );
    assert!(
        user.block("grant")
            .expect("nested grant")
            .argument("on")
            .expect("on")
            .required
    );

    let nats = &engine("nats").expect("nats").instance;
    assert_eq!(
        nats.argument("jetstream").and_then(|a| a.default.clone()),
        Some(true.into())
    );
    assert!(
        nats.block("stream")
            .expect("stream")
            .argument("subjects")
            .expect("subjects")
            .required
    );
    assert_eq!(nats.block("kv").expect("kv").labels, ["bucket"]);

    let s3 = &engine("s3").expect("s3").instance;
    assert_eq!(
        s3.argument("region").and_then(|a| a.default.clone()),
        Some("us-east-1".into())
    );
    assert!(s3.export("secret_key").expect("secret_key").sensitive);
    assert!(s3.block("bucket").expect("bucket").export("url").is_some());

    let process = &engine("process").expect("process").instance;
    assert!(process.argument("command").expect("command").required);
    assert_eq!(
        process.argument("restart").and_then(|a| a.default.clone()),
        Some("on_failure".into())
    );
    let ready = process.block("ready").expect("ready");
    assert!(!ready.object && !ready.repeatable && ready.labels.is_empty());
    let wait_for = process.block("wait_for").expect("wait_for");
    assert_eq!(wait_for.labels, ["address"]);
    assert_eq!(
        wait_for.argument("condition").expect("condition").ty,
        ValueType::Enum(vec!["started", "ready", "succeeded"])
    );
}
