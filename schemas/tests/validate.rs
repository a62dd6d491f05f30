//! Validation tests: every problem kind, checked on hand-built body views against the real engine schemas.
//!
//! Each view is built over a small source text so spans can be asserted as the text they cover, which is
//! what a user sees under the caret. One `check` helper runs validation and returns
//! `(summary, covered text, detail)` triples.

use kip_schemas::{
    AttributeView, BlockSchema, BlockView, BodyView, Shape, Span, Version, engine, summary,
    validate_block, validate_body,
};

/// A source text and the helpers to point into it.
struct Source {
    text: &'static str,
}

impl Source {
    fn new(text: &'static str) -> Source {
        Source { text }
    }

    /// The span of the `occurrence`-th (0-based) appearance of `needle`.
    fn nth(&self, needle: &str, occurrence: usize) -> Span {
        let mut from = 0;
        for _ in 0..occurrence {
            from += self.text[from..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing"))
                + needle.len();
        }
        let start = from
            + self.text[from..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing"));
        Span {
            start,
            end: start + needle.len(),
        }
    }

    fn span(&self, needle: &str) -> Span {
        self.nth(needle, 0)
    }

    fn covered(&self, span: Span) -> &str {
        &self.text[span.start..span.end]
    }

    /// `name = value`, where `value` is the source text of the value (its `occurrence`-th appearance
    /// after the name).
    fn attr(&self, name: &str, occurrence: usize, value: &str, shape: Shape) -> AttributeView {
        let name_span = self.nth(&format!("{name} ="), occurrence);
        let name_span = Span {
            start: name_span.start,
            end: name_span.start + name.len(),
        };
        let after = name_span.end
            + self.text[name_span.end..]
                .find(value)
                .expect("value after name");
        AttributeView {
            name: name.to_owned(),
            name_span,
            value_span: Span {
                start: after,
                end: after + value.len(),
            },
            shape,
        }
    }

    /// A block whose header is the `occurrence`-th `header` (e.g. `role "app"`), labels parsed from it.
    fn block(&self, header: &str, occurrence: usize, body: BodyView) -> BlockView {
        let header_span = self.nth(header, occurrence);
        let ident = header.split_whitespace().next().expect("ident");
        let ident_span = Span {
            start: header_span.start,
            end: header_span.start + ident.len(),
        };
        let mut labels = Vec::new();
        let mut cursor = ident_span.end;
        while let Some(open) = self.text[cursor..header_span.end].find('"') {
            let start = cursor + open;
            let close = start + 1 + self.text[start + 1..].find('"').expect("closing quote");
            labels.push((
                self.text[start + 1..close].to_owned(),
                Span {
                    start,
                    end: close + 1,
                },
            ));
            cursor = close + 1;
        }
        let end = body.span.end.max(header_span.end);
        BlockView {
            ident: ident.to_owned(),
            ident_span,
            labels,
            body,
            span: Span {
                start: header_span.start,
                end,
            },
        }
    }

    /// A body spanning the `occurrence`-th `{ … }` that starts at or after `after`.
    fn body(
        &self,
        after: Span,
        attributes: Vec<AttributeView>,
        blocks: Vec<BlockView>,
    ) -> BodyView {
        let open = after.end + self.text[after.end..].find('{').expect("opening brace");
        let mut depth = 0;
        let mut close = open;
        for (offset, byte) in self.text[open..].bytes().enumerate() {
            match byte {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + offset;
                        break;
                    }
                }
                _ => {}
            }
        }
        BodyView {
            span: Span {
                start: open,
                end: close + 1,
            },
            attributes,
            blocks,
        }
    }
}

fn string(text: &str) -> Shape {
    Shape::String(text.to_owned())
}

fn strings(items: &[&str]) -> Shape {
    Shape::List(items.iter().map(|item| string(item)).collect())
}

fn instance(name: &str) -> &'static BlockSchema {
    &engine(name)
        .unwrap_or_else(|| panic!("engine {name}"))
        .instance
}

fn version(text: &str) -> Version {
    Version::parse(text).expect("version")
}

/// Validates and returns `(summary, text under the span, detail)` for each problem, in order.
fn check<'s>(
    source: &'s Source,
    schema: &BlockSchema,
    body: &BodyView,
    declared: Option<&Version>,
) -> Vec<(&'static str, &'s str, String)> {
    validate_body(schema, body, declared)
        .into_iter()
        .map(|problem| {
            (
                problem.summary,
                source.covered(problem.span),
                problem.detail,
            )
        })
        .collect()
}

/// Runs a single-attribute valkey/postgres/process body and returns its problems.
fn one_attribute(
    engine_name: &str,
    source: &Source,
    attribute: AttributeView,
) -> Vec<(&'static str, String, String)> {
    let schema = instance(engine_name);
    let mut attributes = vec![attribute];
    // Satisfy required arguments so only the attribute under test can produce problems.
    for required in schema.arguments.iter().filter(|argument| argument.required) {
        if attributes[0].name != required.name {
            attributes.push(AttributeView {
                name: required.name.to_owned(),
                name_span: Span::default(),
                value_span: Span::default(),
                shape: Shape::Unknown,
            });
        }
    }
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes,
        blocks: Vec::new(),
    };
    validate_body(schema, &body, None)
        .into_iter()
        .map(|problem| {
            (
                problem.summary,
                source.covered(problem.span).to_owned(),
                problem.detail,
            )
        })
        .collect()
}

#[test]
fn unsupported_argument_suggests_a_close_name() {
    let source = Source::new(r#"maxmemroy = "64mb""#);
    let problems = one_attribute(
        "valkey",
        &source,
        source.attr("maxmemroy", 0, r#""64mb""#, string("64mb")),
    );
    assert_eq!(
        problems,
        [(
            summary::UNSUPPORTED_ARGUMENT,
            "maxmemroy".to_owned(),
            r#"An argument named "maxmemroy" is not expected here. Did you mean "maxmemory"?"#
                .to_owned()
        )]
    );
}

#[test]
fn unsupported_argument_lists_what_is_expected() {
    let source = Source::new(r#"colour = "blue""#);
    let problems = one_attribute(
        "s3",
        &source,
        source.attr("colour", 0, r#""blue""#, string("blue")),
    );
    assert_eq!(
        problems,
        [(
            summary::UNSUPPORTED_ARGUMENT,
            "colour".to_owned(),
            r#"An argument named "colour" is not expected here. An s3 block accepts "version", "port", "access_key", "secret_key", "region"."#
                .to_owned()
        )]
    );
}

#[test]
fn an_argument_named_like_a_block_says_how_to_write_the_block() {
    let source = Source::new(r#"role = "app""#);
    let problems = one_attribute(
        "postgres",
        &source,
        source.attr("role", 0, r#""app""#, string("app")),
    );
    assert_eq!(
        problems,
        [(
            summary::UNSUPPORTED_ARGUMENT,
            "role".to_owned(),
            r#""role" is a block, not an argument: write role "<name>" { … } instead."#.to_owned()
        )]
    );
}

#[test]
fn unsupported_blocks() {
    let source = Source::new(r#"{ version = "16" rol "app" {} settings { a = 1 } table "t" {} }"#);
    let rol = source.block(
        r#"rol "app""#,
        0,
        source.body(source.span(r#"rol "app""#), vec![], vec![]),
    );
    let settings = source.block(
        "settings",
        0,
        source.body(source.span("settings"), vec![], vec![]),
    );
    let table = source.block(
        r#"table "t""#,
        0,
        source.body(source.span(r#"table "t""#), vec![], vec![]),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("version", 0, r#""16""#, string("16"))],
        blocks: vec![rol, settings, table],
    };
    let problems = check(&source, instance("postgres"), &body, Some(&version("16")));
    assert_eq!(
        problems,
        [
            (
                summary::UNSUPPORTED_BLOCK_TYPE,
                "rol",
                r#"Blocks of type "rol" are not expected here. Did you mean "role"?"#.to_owned()
            ),
            (
                summary::UNSUPPORTED_BLOCK_TYPE,
                "settings",
                r#""settings" is an argument, not a block: write settings = { … } instead."#.to_owned()
            ),
            (
                summary::UNSUPPORTED_BLOCK_TYPE,
                "table",
                r#"Blocks of type "table" are not expected here. A postgres block accepts blocks "role", "database", "schema", "grant"."#
                    .to_owned()
            ),
        ]
    );
}

#[test]
fn missing_required_arguments_point_at_the_body_or_the_nested_block() {
    // The instance lacks `version`; the grant lacks `privileges` (and has `role` and `on`).
    let source = Source::new(r#"{ grant { role = "app" on = "database" database = "shop" } }"#);
    let grant_body = source.body(
        source.span("grant"),
        vec![
            source.attr("role", 0, r#""app""#, string("app")),
            source.attr("on", 0, r#""database""#, string("database")),
            source.attr("database", 0, r#""shop""#, string("shop")),
        ],
        vec![],
    );
    let grant = source.block("grant", 0, grant_body);
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![],
        blocks: vec![grant],
    };
    let problems = check(&source, instance("postgres"), &body, None);
    assert_eq!(
        problems,
        [
            (
                summary::MISSING_REQUIRED_ARGUMENT,
                source.text,
                "A postgres block needs the argument \"version\" (scalar). Add version = <scalar>.".to_owned()
            ),
            (
                summary::MISSING_REQUIRED_ARGUMENT,
                "grant",
                "A grant block needs the argument \"privileges\" (list(string)). Add privileges = <list(string)>."
                    .to_owned()
            ),
        ]
    );
}

#[test]
fn type_checks() {
    // (engine, argument, value as written, shape, expected problem or None)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, &str, &'static str, Shape, Option<(&str, &str)>)> = vec![
        ("postgres", "version", "16", Shape::Number(16.0), None),
        ("postgres", "version", r#""16""#, string("16"), None),
        ("postgres", "version", "true", Shape::Bool(true), None),
        (
            "postgres",
            "version",
            r#"["16"]"#,
            strings(&["16"]),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""version" must be scalar, got list."#,
            )),
        ),
        (
            "postgres",
            "superuser",
            "5",
            Shape::Number(5.0),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""superuser" must be string, got number."#,
            )),
        ),
        (
            "postgres",
            "port",
            r#""5432""#,
            string("5432"),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""port" must be a TCP port (a whole number from 1 to 65535), got string."#,
            )),
        ),
        ("postgres", "port", "5433", Shape::Number(5433.0), None),
        ("postgres", "port", "null", Shape::Null, None),
        ("postgres", "port", "var.port", Shape::Unknown, None),
        (
            "postgres",
            "settings",
            r#"{ shared_buffers = "128MB", work_mem = 4096, fsync = false, x = [1] }"#,
            Shape::Object(vec![
                ("shared_buffers".to_owned(), string("128MB")),
                ("work_mem".to_owned(), Shape::Number(4096.0)),
                ("fsync".to_owned(), Shape::Bool(false)),
                ("x".to_owned(), Shape::List(vec![Shape::Number(1.0)])),
            ]),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""settings" must be map(scalar), got list at settings["x"]."#,
            )),
        ),
        (
            "postgres",
            "settings",
            r#"["a"]"#,
            strings(&["a"]),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""settings" must be map(scalar), got list."#,
            )),
        ),
        (
            "postgres",
            "io_method",
            r#""aio""#,
            string("aio"),
            Some((
                summary::INVALID_VALUE,
                r#""io_method" must be one of "sync", "worker", "io_uring", got "aio"."#,
            )),
        ),
        (
            "process",
            "restart",
            r#""on-failure""#,
            string("on-failure"),
            Some((
                summary::INVALID_VALUE,
                r#""restart" must be one of "no", "on_failure", "always", got "on-failure". Did you mean "on_failure"?"#,
            )),
        ),
        (
            "process",
            "restart",
            "false",
            Shape::Bool(false),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""restart" must be one of "no", "on_failure", "always", got bool."#,
            )),
        ),
        (
            "process",
            "command",
            r#"["./web", 8080]"#,
            Shape::List(vec![string("./web"), Shape::Number(8080.0)]),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""command" must be list(string), got number at command[1]."#,
            )),
        ),
        (
            "process",
            "command",
            "null",
            Shape::Null,
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""command" must be list(string), got null."#,
            )),
        ),
        (
            "process",
            "command",
            r#"["./web", local.flag]"#,
            Shape::List(vec![string("./web"), Shape::Unknown]),
            None,
        ),
        (
            "process",
            "env",
            r#"{ PORT = 8080, DEBUG = true, URL = postgres.main.url }"#,
            Shape::Object(vec![
                ("PORT".to_owned(), Shape::Number(8080.0)),
                ("DEBUG".to_owned(), Shape::Bool(true)),
                ("URL".to_owned(), Shape::Unknown),
            ]),
            None,
        ),
        (
            "process",
            "env",
            r#"{ A = null }"#,
            Shape::Object(vec![("A".to_owned(), Shape::Null)]),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""env" must be map(scalar), got null at env["A"]."#,
            )),
        ),
        (
            "process",
            "stop_timeout",
            "5",
            Shape::Number(5.0),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""stop_timeout" must be duration, got number. Write a duration as a string with a unit, such as "5s" or "250ms"."#,
            )),
        ),
        (
            "process",
            "stop_timeout",
            r#""1m30s""#,
            string("1m30s"),
            None,
        ),
        (
            "process",
            "stop_timeout",
            r#""5 sec""#,
            string("5 sec"),
            Some((
                summary::INVALID_VALUE,
                r#""stop_timeout" must be a duration such as "30s", "250ms" or "1h30m" (units ms, s, m, h, d), got "5 sec"."#,
            )),
        ),
        ("valkey", "maxmemory", r#""64mb""#, string("64mb"), None),
        ("valkey", "maxmemory", r#""128MB""#, string("128MB"), None),
        (
            "valkey",
            "maxmemory",
            "1048576",
            Shape::Number(1_048_576.0),
            None,
        ),
        (
            "valkey",
            "maxmemory",
            r#""64 megs""#,
            string("64 megs"),
            Some((
                summary::INVALID_VALUE,
                r#""maxmemory" must be a size such as "64mb", "512kb" or "2gb" (units b, kb, mb, gb, tb, any case, 1kb = 1024 bytes) or a whole number of bytes, got "64 megs"."#,
            )),
        ),
        (
            "valkey",
            "maxmemory",
            "-1",
            Shape::Number(-1.0),
            Some((
                summary::INVALID_VALUE,
                r#""maxmemory" must be a size such as "64mb", "512kb" or "2gb" (units b, kb, mb, gb, tb, any case, 1kb = 1024 bytes) or a whole number of bytes, got -1."#,
            )),
        ),
        (
            "valkey",
            "appendonly",
            r#""yes""#,
            string("yes"),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""appendonly" must be bool, got string."#,
            )),
        ),
        (
            "valkey",
            "save",
            r#""3600 1""#,
            string("3600 1"),
            Some((
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""save" must be list(string), got string."#,
            )),
        ),
    ];
    for (engine_name, name, value, shape, expected) in cases {
        let text: &'static str = Box::leak(format!("{name} = {value}").into_boxed_str());
        let source = Source::new(text);
        let problems = one_attribute(engine_name, &source, source.attr(name, 0, value, shape));
        let expected: Vec<(&str, String, String)> = expected
            .into_iter()
            .map(|(summary, detail)| (summary, value.to_owned(), detail.to_owned()))
            .collect();
        assert_eq!(problems, expected, "{engine_name}: {text}");
    }
}

#[test]
fn nested_type_errors_are_found_in_objects() {
    let source =
        Source::new(r#"{ version = 16 role "app" { login = "yes" member_of = ["a", 1] } }"#);
    let role_body = source.body(
        source.span(r#"role "app""#),
        vec![
            source.attr("login", 0, r#""yes""#, string("yes")),
            source.attr(
                "member_of",
                0,
                r#"["a", 1]"#,
                Shape::List(vec![string("a"), Shape::Number(1.0)]),
            ),
        ],
        vec![],
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("version", 0, "16", Shape::Number(16.0))],
        blocks: vec![source.block(r#"role "app""#, 0, role_body)],
    };
    assert_eq!(
        check(&source, instance("postgres"), &body, Some(&version("16"))),
        [
            (
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#""yes""#,
                r#""login" must be bool, got string."#.to_owned()
            ),
            (
                summary::INCORRECT_ATTRIBUTE_VALUE_TYPE,
                r#"["a", 1]"#,
                r#""member_of" must be list(string), got number at member_of[1]."#.to_owned()
            ),
        ]
    );
}

#[test]
fn label_counts() {
    let source =
        Source::new(r#"{ version = 16 role {} database "a" "b" {} schema "" { database = "x" } }"#);
    let role = source.block("role", 0, source.body(source.span("role"), vec![], vec![]));
    let database = source.block(
        r#"database "a" "b""#,
        0,
        source.body(source.span(r#""b""#), vec![], vec![]),
    );
    let schema_header = source.span(r#"schema """#);
    let schema = source.block(
        r#"schema """#,
        0,
        source.body(
            schema_header,
            vec![source.attr("database", 0, r#""x""#, string("x"))],
            vec![],
        ),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("version", 0, "16", Shape::Number(16.0))],
        blocks: vec![role, database, schema],
    };
    assert_eq!(
        check(&source, instance("postgres"), &body, None),
        [
            (
                summary::WRONG_NUMBER_OF_LABELS,
                "role",
                r#"A role block needs 1 label (name), got 0. Write it as role "<name>" { … }."#.to_owned()
            ),
            (
                summary::WRONG_NUMBER_OF_LABELS,
                r#""b""#,
                r#"A database block needs 1 label (name), got 2. Write it as database "<name>" { … }."#.to_owned()
            ),
            (summary::INVALID_VALUE, r#""""#, "The name label of a schema block must not be empty.".to_owned()),
        ]
    );

    let source = Source::new(r#"{ command = ["x"] ready "web" { tcp = "127.0.0.1:80" } }"#);
    let ready = source.block(
        r#"ready "web""#,
        0,
        source.body(
            source.span(r#""web""#),
            vec![source.attr("tcp", 0, r#""127.0.0.1:80""#, string("127.0.0.1:80"))],
            vec![],
        ),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("command", 0, r#"["x"]"#, strings(&["x"]))],
        blocks: vec![ready],
    };
    assert_eq!(
        check(&source, instance("process"), &body, None),
        [(
            summary::WRONG_NUMBER_OF_LABELS,
            r#""web""#,
            "A ready block takes no labels, got 1. Write it as ready { … }.".to_owned()
        )]
    );
}

#[test]
fn duplicates() {
    let source = Source::new(
        r#"{ command = ["a"] command = ["b"] ready { tcp = "h:1" } ready { tcp = "h:2" } wait_for "postgres.main" {} wait_for "postgres.main" {} wait_for "valkey.cache" {} }"#,
    );
    let ready = |occurrence: usize, value: &'static str| {
        let header = source.nth("ready", occurrence);
        source.block(
            "ready",
            occurrence,
            source.body(
                header,
                vec![source.attr("tcp", occurrence, value, string(value.trim_matches('"')))],
                vec![],
            ),
        )
    };
    let wait_for = |header: &str, occurrence: usize| {
        source.block(
            header,
            occurrence,
            source.body(source.nth(header, occurrence), vec![], vec![]),
        )
    };
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![
            source.attr("command", 0, r#"["a"]"#, strings(&["a"])),
            source.attr("command", 1, r#"["b"]"#, strings(&["b"])),
        ],
        blocks: vec![
            ready(0, r#""h:1""#),
            ready(1, r#""h:2""#),
            wait_for(r#"wait_for "postgres.main""#, 0),
            wait_for(r#"wait_for "postgres.main""#, 1),
            wait_for(r#"wait_for "valkey.cache""#, 0),
        ],
    };
    let problems = check(&source, instance("process"), &body, None);
    assert_eq!(
        problems,
        [
            (
                summary::DUPLICATE_ARGUMENT,
                "command",
                r#"The argument "command" is set more than once in this process block. Remove all but one."#.to_owned()
            ),
            (
                summary::DUPLICATE_BLOCK,
                "ready",
                "Only one ready block is allowed in a process block. Merge them into one.".to_owned()
            ),
            (
                summary::DUPLICATE_BLOCK,
                r#"wait_for "postgres.main""#,
                r#"wait_for "postgres.main" is declared more than once in this process block. Rename or remove one of them."#
                    .to_owned()
            ),
        ]
    );
    // The second `command` is the one reported, the first one counts.
    assert_eq!(
        validate_body(instance("process"), &body, None)[0].span,
        source.nth("command", 1)
    );
}

#[test]
fn repeatable_unlabelled_objects_may_repeat() {
    let source = Source::new(
        r#"{ version = 16 grant { role = "a" on = "database" privileges = ["CONNECT"] } grant { role = "a" on = "database" privileges = ["CONNECT"] } }"#,
    );
    let grant = |occurrence: usize| {
        let header = source.nth("grant", occurrence);
        source.block(
            "grant",
            occurrence,
            source.body(
                header,
                vec![
                    source.attr("role", occurrence, r#""a""#, string("a")),
                    source.attr("on", occurrence, r#""database""#, string("database")),
                    source.attr(
                        "privileges",
                        occurrence,
                        r#"["CONNECT"]"#,
                        strings(&["CONNECT"]),
                    ),
                ],
                vec![],
            ),
        )
    };
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("version", 0, "16", Shape::Number(16.0))],
        blocks: vec![grant(0), grant(1)],
    };
    assert_eq!(check(&source, instance("postgres"), &body, None), []);
}

#[test]
fn version_gates() {
    let source =
        Source::new(r#"{ version = "16" io_method = "io_uring" locale_provider = "icu" }"#);
    let body = |_: ()| BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![
            source.attr("version", 0, r#""16""#, string("16")),
            source.attr("io_method", 0, r#""io_uring""#, string("io_uring")),
            source.attr("locale_provider", 0, r#""icu""#, string("icu")),
        ],
        blocks: vec![],
    };
    let cases = [
        (
            Some("16"),
            vec![(
                summary::ARGUMENT_REQUIRES_NEWER_VERSION,
                "io_method",
                r#"The argument "io_method" requires engine version >= 18 (declared 16). Set version to 18 or later, or remove the argument."#,
            )],
        ),
        (
            Some("14.9"),
            vec![
                (
                    summary::ARGUMENT_REQUIRES_NEWER_VERSION,
                    "io_method",
                    r#"The argument "io_method" requires engine version >= 18 (declared 14.9). Set version to 18 or later, or remove the argument."#,
                ),
                (
                    summary::ARGUMENT_REQUIRES_NEWER_VERSION,
                    "locale_provider",
                    r#"The argument "locale_provider" requires engine version >= 15 (declared 14.9). Set version to 15 or later, or remove the argument."#,
                ),
            ],
        ),
        (Some("18"), vec![]),
        (Some("18.1"), vec![]),
        (None, vec![]),
    ];
    for (declared, expected) in cases {
        let declared = declared.map(version);
        let problems = check(&source, instance("postgres"), &body(()), declared.as_ref());
        let expected: Vec<(&str, &str, String)> = expected
            .into_iter()
            .map(|(summary, text, detail)| (summary, text, detail.to_owned()))
            .collect();
        assert_eq!(problems, expected, "declared {declared:?}");
    }
}

#[test]
fn block_version_gates() {
    let schema = BlockSchema::new("server", "A test server.")
        .labels(&["name"])
        .object()
        .blocks(vec![
            BlockSchema::named_object("publication", "name", "Logical replication.").since(10),
        ]);
    let source = Source::new(r#"{ publication "all" {} }"#);
    let publication = source.block(
        r#"publication "all""#,
        0,
        source.body(source.span(r#""all""#), vec![], vec![]),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![],
        blocks: vec![publication],
    };
    assert_eq!(
        check(&source, &schema, &body, Some(&version("9.6"))),
        [(
            summary::BLOCK_REQUIRES_NEWER_VERSION,
            "publication",
            "The publication block requires engine version >= 10 (declared 9.6). Set version to 10 or later, or remove the block."
                .to_owned()
        )]
    );
    assert_eq!(check(&source, &schema, &body, Some(&version("10"))), []);
}

#[test]
fn exactly_one_probe_kind() {
    let run = |text: &'static str, attributes: &[(&str, &'static str)]| {
        let source = Source::new(text);
        let ready_header = source.span("ready");
        let ready_attributes = attributes
            .iter()
            .map(|(name, value)| source.attr(name, 0, value, string(value.trim_matches('"'))))
            .collect();
        let ready = source.block(
            "ready",
            0,
            source.body(ready_header, ready_attributes, vec![]),
        );
        let body = BodyView {
            span: Span {
                start: 0,
                end: text.len(),
            },
            attributes: vec![source.attr("command", 0, r#"["x"]"#, strings(&["x"]))],
            blocks: vec![ready],
        };
        validate_body(instance("process"), &body, None)
            .into_iter()
            .map(|problem| {
                (
                    problem.summary,
                    source.covered(problem.span).to_owned(),
                    problem.detail,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        run(r#"{ command = ["x"] ready { interval = "1s" } }"#, &[("interval", r#""1s""#)]),
        [(
            summary::MISSING_REQUIRED_ARGUMENT,
            "ready".to_owned(),
            r#"A ready block needs exactly one of "http", "tcp", "exec", "log_line", "socket". Add one of them."#.to_owned()
        )]
    );
    assert_eq!(
        run(r#"{ command = ["x"] ready { http = "http://h/" tcp = "h:1" } }"#, &[("http", r#""http://h/""#), ("tcp", r#""h:1""#)]),
        [(
            summary::CONFLICTING_ARGUMENTS,
            "tcp".to_owned(),
            r#""tcp" cannot be set together with "http": a ready block takes exactly one of "http", "tcp", "exec", "log_line", "socket". Keep one of them."#
                .to_owned()
        )]
    );
    assert_eq!(
        run(
            r#"{ command = ["x"] ready { log_line = "listening" } }"#,
            &[("log_line", r#""listening""#)]
        ),
        []
    );
}

#[test]
fn instance_level_schema_needs_its_database_but_nested_does_not() {
    let source = Source::new(
        r#"{ version = 16 schema "audit" { owner = "app" } database "shop" { schema "audit" { ownr = "app" } } }"#,
    );
    let top_schema = source.block(
        r#"schema "audit""#,
        0,
        source.body(
            source.nth(r#"schema "audit""#, 0),
            vec![source.attr("owner", 0, r#""app""#, string("app"))],
            vec![],
        ),
    );
    let nested_schema = source.block(
        r#"schema "audit""#,
        1,
        source.body(
            source.nth(r#"schema "audit""#, 1),
            vec![source.attr("ownr", 0, r#""app""#, string("app"))],
            vec![],
        ),
    );
    let database = source.block(
        r#"database "shop""#,
        0,
        source.body(source.span(r#""shop""#), vec![], vec![nested_schema]),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![source.attr("version", 0, "16", Shape::Number(16.0))],
        blocks: vec![top_schema, database],
    };
    assert_eq!(
        check(&source, instance("postgres"), &body, None),
        [
            (
                summary::MISSING_REQUIRED_ARGUMENT,
                "schema",
                r#"A schema block needs the argument "database" (string). Add database = <string>."#.to_owned()
            ),
            (
                summary::UNSUPPORTED_ARGUMENT,
                "ownr",
                r#"An argument named "ownr" is not expected here. Did you mean "owner"?"#.to_owned()
            ),
        ]
    );
}

#[test]
fn every_problem_is_reported_in_one_pass_in_source_order() {
    let source = Source::new(
        r#"{ maxmemroy = "1gb" appendonly = "yes" io_threads = 2 user { enabled = 1 } user "app" { keys = "app:*" } usr "x" {} }"#,
    );
    let unlabelled_user = source.block(
        "user",
        0,
        source.body(
            source.nth("user", 0),
            vec![source.attr("enabled", 0, "1", Shape::Number(1.0))],
            vec![],
        ),
    );
    let app = source.block(
        r#"user "app""#,
        0,
        source.body(
            source.span(r#"user "app""#),
            vec![source.attr("keys", 0, r#""app:*""#, string("app:*"))],
            vec![],
        ),
    );
    let usr = source.block(
        r#"usr "x""#,
        0,
        source.body(source.span(r#"usr "x""#), vec![], vec![]),
    );
    let body = BodyView {
        span: Span {
            start: 0,
            end: source.text.len(),
        },
        attributes: vec![
            source.attr("maxmemroy", 0, r#""1gb""#, string("1gb")),
            source.attr("appendonly", 0, r#""yes""#, string("yes")),
            source.attr("io_threads", 0, "2", Shape::Number(2.0)),
        ],
        blocks: vec![unlabelled_user, app, usr],
    };
    let problems = check(&source, instance("valkey"), &body, Some(&version("8")));
    let summaries: Vec<(&str, &str)> = problems
        .iter()
        .map(|(summary, text, _)| (*summary, *text))
        .collect();
    assert_eq!(
        summaries,
        [
            (summary::MISSING_REQUIRED_ARGUMENT, source.text),
            (summary::UNSUPPORTED_ARGUMENT, "maxmemroy"),
            (summary::INCORRECT_ATTRIBUTE_VALUE_TYPE, r#""yes""#),
            (summary::WRONG_NUMBER_OF_LABELS, "user"),
            (summary::INCORRECT_ATTRIBUTE_VALUE_TYPE, "1"),
            (summary::INCORRECT_ATTRIBUTE_VALUE_TYPE, r#""app:*""#),
            (summary::UNSUPPORTED_BLOCK_TYPE, "usr"),
        ]
    );
}

#[test]
fn validate_block_checks_the_header_too() {
    let source = Source::new(r#"role { login = true }"#);
    let role = source.block(
        "role",
        0,
        source.body(
            source.span("role"),
            vec![source.attr("login", 0, "true", Shape::Bool(true))],
            vec![],
        ),
    );
    let role_schema = instance("postgres").block("role").expect("role block");
    let problems = validate_block(role_schema, &role, None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].summary, summary::WRONG_NUMBER_OF_LABELS);
    assert_eq!(source.covered(problems[0].span), "role");

    // Missing required arguments of a whole block point at its ident.
    let source = Source::new(r#"stream "ORDERS" { storage = "file" }"#);
    let stream = source.block(
        r#"stream "ORDERS""#,
        0,
        source.body(
            source.span(r#""ORDERS""#),
            vec![source.attr("storage", 0, r#""file""#, string("file"))],
            vec![],
        ),
    );
    let stream_schema = instance("nats").block("stream").expect("stream block");
    let problems = validate_block(stream_schema, &stream, None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].summary, summary::MISSING_REQUIRED_ARGUMENT);
    assert_eq!(source.covered(problems[0].span), "stream");
    assert_eq!(
        problems[0].detail,
        r#"A stream block needs the argument "subjects" (list(string)). Add subjects = <list(string)>."#
    );
}

#[test]
fn problems_serialise_for_json_output() {
    let problem = kip_schemas::Problem {
        span: Span { start: 3, end: 9 },
        summary: summary::DUPLICATE_ARGUMENT,
        detail: "x".to_owned(),
    };
    assert_eq!(
        serde_json::to_value(&problem).unwrap(),
        serde_json::json!({ "span": { "start": 3, "end": 9 }, "summary": "Duplicate argument", "detail": "x" })
    );
}
