//! Tests for `kip fmt`'s engine: a table of layout cases, error locations, and a property test
//! over generated kip-like documents (no panic, idempotent, same decoded body).

use kip_core::fmt::{FormatError, format_source};
use proptest::prelude::*;

/// Formats `input`, compares with `expected`, and checks that formatting is idempotent and
/// keeps the decoded body.
#[track_caller]
fn check(name: &str, input: &str, expected: &str) {
    let formatted = format_source(input)
        .unwrap_or_else(|error| panic!("case `{name}`: format failed: {error}\n{input}"));
    assert_eq!(
        formatted, expected,
        "case `{name}`\n--- input ---\n{input}\n--- got ---\n{formatted}\n--- expected ---\n{expected}"
    );
    let again = format_source(&formatted).unwrap();
    assert_eq!(again, formatted, "case `{name}` is not idempotent");
    assert_same_body(&input.replace("\r\n", "\n"), &formatted);
}

#[track_caller]
fn assert_same_body(input: &str, formatted: &str) {
    let before: hcl::Body = hcl::from_str(input).expect("input decodes");
    let after: hcl::Body = hcl::from_str(formatted)
        .unwrap_or_else(|error| panic!("output does not decode: {error}\n{formatted}"));
    assert_eq!(
        before, after,
        "decoded body changed\n{input}\n---\n{formatted}"
    );
}

const CASES: &[(&str, &str, &str)] = &[
    ("empty file", "", ""),
    ("only whitespace", " \n\n\t\n", ""),
    ("final newline added", "a = 1", "a = 1\n"),
    ("extra final newlines removed", "a = 1\n\n\n", "a = 1\n"),
    ("leading blank lines removed", "\n\n  \na = 1\n", "a = 1\n"),
    (
        "spaces around equals",
        "a=1\nbb   =    2\n",
        "a  = 1\nbb = 2\n",
    ),
    (
        "alignment in a run",
        "port = 5432\nmax_connections = 100\nx = true\n",
        "port            = 5432\nmax_connections = 100\nx               = true\n",
    ),
    (
        "blank line breaks the run",
        "a = 1\nbbb = 2\n\ncccccc = 3\nd = 4\n",
        "a   = 1\nbbb = 2\n\ncccccc = 3\nd      = 4\n",
    ),
    (
        "comment line breaks the run",
        "a = 1\n# about b\nbbbb = 2\nc = 3\n",
        "a = 1\n# about b\nbbbb = 2\nc    = 3\n",
    ),
    (
        "block breaks the run",
        "a = 1\nb {}\ncccc = 3\n",
        "a = 1\nb {}\ncccc = 3\n",
    ),
    (
        "multi-line attribute is not aligned and breaks the run",
        "a = 1\nsettings = {\nmax_connections = 100\nwork_mem = \"4MB\"\n}\nversion = \"16\"\n",
        "a = 1\nsettings = {\n  max_connections = 100\n  work_mem        = \"4MB\"\n}\nversion = \"16\"\n",
    ),
    (
        "single-line object value is aligned",
        "a = { x = 1 }\nlong_name = 2\n",
        "a         = { x = 1 }\nlong_name = 2\n",
    ),
    (
        "nested blocks are indented by two spaces",
        "postgres \"main\" {\nversion = \"16\"\n      role \"app\" {\n\tlogin = true\n    }\n}\n",
        "postgres \"main\" {\n  version = \"16\"\n  role \"app\" {\n    login = true\n  }\n}\n",
    ),
    (
        "block header spacing",
        "postgres   \"main\"{\n}\nvalkey cache   \"x\"   {\na = 1\n}\n",
        "postgres \"main\" {}\nvalkey cache \"x\" {\n  a = 1\n}\n",
    ),
    (
        "empty block on one line",
        "nats \"bus\" {  }\n",
        "nats \"bus\" {}\n",
    ),
    (
        "empty block over several lines collapses",
        "nats \"bus\" {\n\n}\n",
        "nats \"bus\" {}\n",
    ),
    (
        "block with only a comment is not collapsed",
        "nats \"bus\" {\n\n# nothing yet\n\n}\n",
        "nats \"bus\" {\n  # nothing yet\n}\n",
    ),
    (
        "one-line block stays on one line",
        "role \"app\" {login=true}\nrole \"ro\" {   login   =   false   }\n",
        "role \"app\" { login = true }\nrole \"ro\" { login = false }\n",
    ),
    (
        "blank lines collapse and none after { or before }",
        "a {\n\n\nb = 1\n\n\n\nc = 2\n\n}\n\n\n\nd = 3\n",
        "a {\n  b = 1\n\n  c = 2\n}\n\nd = 3\n",
    ),
    (
        "trailing whitespace removed",
        "a = 1   \t\nb {   \n  c = 2  # note   \n}  \n",
        "a = 1\nb {\n  c = 2 # note\n}\n",
    ),
    (
        "comments in every position",
        concat!(
            "# file header\n",
            "// slash comment\n",
            "/* block */ a = 1 /* after */ # trailing\n",
            "b {   # after brace\n",
            "    # leading, inside\n",
            "  c = 2   // trailing slash\n",
            "      /* lonely block */\n",
            "}   # after close\n",
            "# file footer\n",
        ),
        concat!(
            "# file header\n",
            "// slash comment\n",
            "/* block */ a = 1 /* after */ # trailing\n",
            "b { # after brace\n",
            "  # leading, inside\n",
            "  c = 2 // trailing slash\n",
            "  /* lonely block */\n",
            "} # after close\n",
            "# file footer\n",
        ),
    ),
    (
        "multi-line block comment keeps its inner lines",
        "a {\n        /* one\n     two   \n   */\n  b = 1\n}\n",
        "a {\n  /* one\n     two\n   */\n  b = 1\n}\n",
    ),
    (
        "multi-line list",
        "ports = [\n5432,\n    5433, # replica\n  # spare\n        5434,\n]\n",
        "ports = [\n  5432,\n  5433, # replica\n  # spare\n  5434,\n]\n",
    ),
    (
        "single-line list spacing",
        "a = [ 1,2 ,3 ]\nb = [ ]\nc = [\n]\n",
        "a = [1, 2, 3]\nb = []\nc = []\n",
    ),
    (
        "multi-line object aligns its equals",
        "env = {\nPGHOST = postgres.main.host\n  PGPORT=5432\n\"X-Y\" = \"z\"\n}\n",
        "env = {\n  PGHOST = postgres.main.host\n  PGPORT = 5432\n  \"X-Y\"  = \"z\"\n}\n",
    ),
    (
        "nested multi-line expressions",
        "x = merge({\na = 1\n}, {\nbb = [\n1,\n2,\n]\n})\n",
        "x = merge({\n  a = 1\n}, {\n  bb = [\n    1,\n    2,\n  ]\n})\n",
    ),
    (
        "list of objects",
        "users = [\n{\nname = \"a\"\n},\n{ name = \"b\" },\n]\n",
        "users = [\n  {\n    name = \"a\"\n  },\n  { name = \"b\" },\n]\n",
    ),
    (
        "closing bracket after a value on the same line",
        "x = [1,\n2]\ny = 3\n",
        "x = [1,\n  2]\ny = 3\n",
    ),
    (
        "heredoc body and marker untouched",
        "a {\ntext = <<EOT\n  keep   \n\tthis\nEOT\n    other = 1\n}\n",
        "a {\n  text = <<EOT\n  keep   \n\tthis\nEOT\n  other = 1\n}\n",
    ),
    (
        "indented heredoc, aligned with the line above and ending the run",
        "a {\nx = 1\nscript = <<-EOT\n      echo hi\n    EOT\nlonger_key = 2\n}\n",
        "a {\n  x      = 1\n  script = <<-EOT\n      echo hi\n    EOT\n  longer_key = 2\n}\n",
    ),
    (
        "heredoc inside a call",
        "x = trimspace(<<EOT\n  body\nEOT\n)\n",
        "x = trimspace(<<EOT\n  body\nEOT\n)\n",
    ),
    (
        "templates and strings kept as written",
        "url = \"postgres://${ user }@${host}:${ port }/db?x=%{ if a }1%{ endif }\"\n",
        "url = \"postgres://${ user }@${host}:${ port }/db?x=%{ if a }1%{ endif }\"\n",
    ),
    (
        "escapes in strings",
        "a = \"quote \\\" and $${literal}   \"\n",
        "a = \"quote \\\" and $${literal}   \"\n",
    ),
    (
        "expressions: operators, calls, traversals",
        "a = x+1\nb = !flag\nc = -  count\nd = cond?1:2\ne = upper( \"x\" , var.y )\nf = a.b[0].c\ng = a.*.b\nh = a[*].b\ni = x  ==  y&&z\nj = 1-2\nk = a - -1\nl = - -1\nm = { x: 1 }\n",
        "a = x + 1\nb = !flag\nc = -count\nd = cond ? 1 : 2\ne = upper(\"x\", var.y)\nf = a.b[0].c\ng = a.*.b\nh = a[*].b\ni = x == y && z\nj = 1 - 2\nk = a - -1\nl = - -1\nm = { x : 1 }\n",
    ),
    (
        "identifiers with dashes are not split",
        "a = my-name\nb = my-name - other\n",
        "a = my-name\nb = my-name - other\n",
    ),
    (
        "for expressions",
        "a = [for s in var.list:upper(s) if s != \"\"]\nb = {for k,v in var.map:k=>v...}\n",
        "a = [for s in var.list : upper(s) if s != \"\"]\nb = { for k, v in var.map : k => v... }\n",
    ),
    (
        "expanded function arguments",
        "a = concat(var.lists ...)\n",
        "a = concat(var.lists...)\n",
    ),
    (
        "CRLF line endings become LF",
        "postgres \"main\" {\r\n  version = \"16\"\r\n\r\n\r\n  port=5432\r\n}\r\n",
        "postgres \"main\" {\n  version = \"16\"\n\n  port = 5432\n}\n",
    ),
    (
        "tabs for indentation",
        "a {\n\tb {\n\t\tc = 1\n\t}\n}\n",
        "a {\n  b {\n    c = 1\n  }\n}\n",
    ),
    (
        "kip example",
        concat!(
            "# kip.hcl\n",
            "postgres \"main\" {\n",
            "    version = \"16\"\n",
            "    port = 5432\n",
            "  database \"app\" { owner = \"app\" }\n",
            "  role \"app\" {\n",
            "  login = true\n",
            "    password = env(\"APP_PASSWORD\")   # from the shell\n",
            "  }\n",
            "}\n",
            "process \"web\" {\n",
            "  command = [\"./web\", \"--port\", \"8080\"]\n",
            "  env = {\n",
            "    DATABASE_URL = postgres.main.url\n",
            "    CACHE = valkey.cache.url\n",
            "  }\n",
            "  depends_on = [postgres.main, valkey.cache]\n",
            "}\n",
        ),
        concat!(
            "# kip.hcl\n",
            "postgres \"main\" {\n",
            "  version = \"16\"\n",
            "  port    = 5432\n",
            "  database \"app\" { owner = \"app\" }\n",
            "  role \"app\" {\n",
            "    login    = true\n",
            "    password = env(\"APP_PASSWORD\") # from the shell\n",
            "  }\n",
            "}\n",
            "process \"web\" {\n",
            "  command = [\"./web\", \"--port\", \"8080\"]\n",
            "  env = {\n",
            "    DATABASE_URL = postgres.main.url\n",
            "    CACHE        = valkey.cache.url\n",
            "  }\n",
            "  depends_on = [postgres.main, valkey.cache]\n",
            "}\n",
        ),
    ),
];

#[test]
fn layout_cases() {
    for (name, input, expected) in CASES {
        check(name, input, expected);
    }
}

#[test]
fn parse_errors_carry_line_and_column() {
    let cases = [
        ("a = 1\nb = [\n  1,, \n]\n", 3, 5),
        ("postgres \"main\" {\n  port = \n}\n", 2, 10),
        ("port = 5432\nname = \"a\" \"b\"\n", 2, 12),
    ];
    for (input, line, column) in cases {
        match format_source(input) {
            Err(FormatError::Parse {
                line: got_line,
                column: got_column,
                message,
            }) => {
                assert_eq!(
                    (got_line, got_column),
                    (line, column),
                    "{input:?}: {message}"
                );
                assert!(!message.is_empty());
            }
            Ok(output) => panic!("{input:?} formatted to {output:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: generated kip-like documents.

/// Horizontal whitespace, possibly none.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => Just(" ".to_owned()),
        1 => Just("   ".to_owned()),
        1 => Just("\t".to_owned()),
        1 => Just(" /* c */ ".to_owned()),
    ]
}

/// Horizontal whitespace, at least one character.
fn ws1() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(" ".to_owned()),
        Just("  ".to_owned()),
        Just("\t".to_owned())
    ]
}

fn indent() -> impl Strategy<Value = String> {
    "[ \t]{0,5}"
}

fn trailing() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just("   ".to_owned()),
        1 => Just(" # trailing note".to_owned()),
        1 => Just("// slash note  ".to_owned()),
        1 => Just(" /* block note */".to_owned()),
    ]
}

/// Blank lines, comment lines and stray whitespace between items.
fn filler() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\n".to_owned()),
            Just("   \n".to_owned()),
            Just("# a comment\n".to_owned()),
            Just("  // another   \n".to_owned()),
            Just("/* multi\n   line */\n".to_owned()),
        ],
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a"),
        Just("port"),
        Just("max_connections"),
        Just("login"),
        Just("data-dir"),
        Just("x"),
    ]
    .prop_map(str::to_owned)
}

/// Expressions that fit on one line; `~` in a template stands for random whitespace.
fn leaf() -> impl Strategy<Value = String> {
    let templates = prop_oneof![
        Just("\"16\""),
        Just("\"hello world\""),
        Just("\"${postgres.main.host}:${ postgres.main.port }\""),
        Just("\"%{ if enabled }on%{ else }off%{ endif }\""),
        Just("\"esc \\\" $${x}\""),
        Just("5432"),
        Just("-1"),
        Just("-~1"),
        Just("1.5"),
        Just("1e3"),
        Just("true"),
        Just("false"),
        Just("null"),
        Just("postgres.main.url"),
        Just("valkey~.~cache.url"),
        Just("var.list[~0~]"),
        Just("var.items~.*.~name"),
        Just("var.items[~*~].name"),
        Just("upper(~\"x\"~)"),
        Just("env(~\"HOME\"~,~\"/tmp\"~)"),
        Just("concat(~var.a~,~var.b~...~)"),
        Just("port~+~1"),
        Just("port~-~1"),
        Just("my-name"),
        Just("!~flag"),
        Just("-~count"),
        Just("a~&&~!b~||~c"),
        Just("x~==~1~?~\"yes\"~:~\"no\""),
        Just("(~port~*~2~)"),
        Just("[~for~s~in~var.list~:~upper(s)~if~s~!=~\"\"~]"),
        Just("{~for~k,~v~in~var.map~:~k~=>~v~}"),
    ];
    (templates, prop::collection::vec(ws(), 16)).prop_map(|(template, spaces)| {
        // Whitespace between two word tokens must not vanish, so those slots use a space.
        let mut out = String::new();
        let mut spaces = spaces.into_iter();
        let parts: Vec<&str> = template.split('~').collect();
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                let before = parts[index - 1].chars().last().unwrap_or(' ');
                let after = part.chars().next().unwrap_or(' ');
                let word = |c: char| c.is_alphanumeric() || c == '_' || c == '"' || c == '-';
                let space = spaces.next().unwrap_or_default();
                if word(before) && word(after) && space.is_empty() {
                    out.push(' ');
                } else {
                    out.push_str(&space);
                }
            }
            out.push_str(part);
        }
        out
    })
}

/// An expression; multi-line forms only when `multiline` is allowed.
fn expr(depth: u32, multiline: bool) -> BoxedStrategy<String> {
    if depth == 0 {
        return leaf().boxed();
    }
    let mut options = vec![
        (3, leaf().boxed()),
        (1, single_line_list(depth - 1)),
        (1, single_line_object(depth - 1)),
    ];
    if multiline {
        options.push((1, multi_line_list(depth - 1)));
        options.push((1, multi_line_object(depth - 1)));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn single_line_list(depth: u32) -> BoxedStrategy<String> {
    (
        prop::collection::vec((expr(depth, false), ws(), ws()), 0..4),
        ws(),
        any::<bool>(),
    )
        .prop_map(|(items, inner, trailing_comma)| {
            let items: Vec<String> = items
                .into_iter()
                .map(|(item, before, after)| format!("{before}{item}{after}"))
                .collect();
            let comma = if trailing_comma && !items.is_empty() {
                ","
            } else {
                ""
            };
            format!("[{inner}{}{comma}]", items.join(","))
        })
        .boxed()
}

fn single_line_object(depth: u32) -> BoxedStrategy<String> {
    (
        prop::collection::vec((expr(depth, false), ws(), ws(), ws()), 0..3),
        ws(),
    )
        .prop_map(|(items, inner)| {
            let items: Vec<String> = items
                .into_iter()
                .enumerate()
                .map(|(index, (value, a, b, c))| format!("{a}k{index}{b}={c}{value}"))
                .collect();
            format!("{{{inner}{}{inner}}}", items.join(","))
        })
        .boxed()
}

fn multi_line_list(depth: u32) -> BoxedStrategy<String> {
    (
        prop::collection::vec((indent(), expr(depth, true), trailing(), filler()), 0..4),
        indent(),
        filler(),
    )
        .prop_map(|(items, close_indent, first_filler)| {
            let mut out = format!("[\n{first_filler}");
            for (indent, item, trailing, filler) in items {
                out.push_str(&format!("{indent}{item},{trailing}\n{filler}"));
            }
            out.push_str(&format!("{close_indent}]"));
            out
        })
        .boxed()
}

fn multi_line_object(depth: u32) -> BoxedStrategy<String> {
    (
        prop::collection::vec(
            (
                indent(),
                key(),
                ws(),
                expr(depth, true),
                trailing(),
                filler(),
            ),
            0..4,
        ),
        indent(),
    )
        .prop_map(|(items, close_indent)| {
            let mut out = "{\n".to_owned();
            for (index, (indent, key, space, value, trailing, filler)) in
                items.into_iter().enumerate()
            {
                out.push_str(&format!(
                    "{indent}{key}_{index}{space}={space}{value}{trailing}\n{filler}"
                ));
            }
            out.push_str(&format!("{close_indent}}}"));
            out
        })
        .boxed()
}

fn heredoc() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<<EOT\nline one   \n  ${var.x} two\nEOT".to_owned()),
        Just("<<-EOT\n    indented\n      more\n    EOT".to_owned()),
        Just("<<EOF\n  } ] ) # not a comment\n\n\nEOF".to_owned()),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"main\"".to_owned()),
        Just("\"app\"".to_owned()),
        Just("cache".to_owned()),
    ]
}

fn block_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("postgres"),
        Just("role"),
        Just("database"),
        Just("process"),
        Just("bucket"),
    ]
    .prop_map(str::to_owned)
}

/// A body; `index` makes attribute names unique within it.
fn body(depth: u32) -> BoxedStrategy<String> {
    prop::collection::vec(item(depth), 0..6)
        .prop_map(|items| {
            items
                .into_iter()
                .enumerate()
                .map(|(index, item)| item.replace("KEY", &format!("_{index}")))
                .collect::<String>()
        })
        .boxed()
}

fn item(depth: u32) -> BoxedStrategy<String> {
    let attribute = (
        indent(),
        key(),
        ws(),
        ws(),
        expr(2, true),
        trailing(),
        filler(),
    )
        .prop_map(|(indent, key, before, after, value, trailing, filler)| {
            format!("{indent}{key}KEY{before}={after}{value}{trailing}\n{filler}")
        });
    let heredoc_attribute =
        (indent(), key(), heredoc(), filler()).prop_map(|(indent, key, heredoc, filler)| {
            format!("{indent}{key}KEY = {heredoc}\n{filler}")
        });
    let one_line_block = (
        indent(),
        block_type(),
        ws1(),
        label(),
        ws(),
        key(),
        ws(),
        leaf(),
        ws(),
    )
        .prop_map(|(indent, kind, space, label, a, key, b, value, c)| {
            format!("{indent}{kind}{space}{label}{a}{{{a}{key}{b}={c}{value}{c}}}\n")
        });
    let empty_block = (
        indent(),
        block_type(),
        label(),
        prop_oneof![Just("{}"), Just("{ }"), Just("{\n\n}")],
    )
        .prop_map(|(indent, kind, label, braces)| format!("{indent}{kind} {label} {braces}\n"));
    let mut options = vec![
        (4, attribute.boxed()),
        (1, heredoc_attribute.boxed()),
        (1, one_line_block.boxed()),
        (1, empty_block.boxed()),
    ];
    if depth > 0 {
        let block = (
            indent(),
            block_type(),
            prop::collection::vec((ws1(), label()), 0..3),
            ws(),
            trailing(),
            filler(),
            body(depth - 1),
            indent(),
            trailing(),
        )
            .prop_map(
                |(indent, kind, labels, space, open_trailing, filler, body, close_indent, close_trailing)| {
                    let labels: String = labels.into_iter().map(|(s, l)| format!("{s}{l}")).collect();
                    // A `{` needs a space before it when it follows an identifier label.
                    let space = if space.is_empty() { " ".to_owned() } else { space };
                    let open_trailing = if open_trailing.trim_start().starts_with("/*") {
                        String::new()
                    } else {
                        open_trailing
                    };
                    format!(
                        "{indent}{kind}{labels}{space}{{{open_trailing}\n{filler}{body}{close_indent}}}{close_trailing}\n"
                    )
                },
            );
        options.push((2, block.boxed()));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn document() -> impl Strategy<Value = String> {
    (filler(), body(3), any::<bool>(), any::<bool>()).prop_map(
        |(lead, body, crlf, final_newline)| {
            let mut text = format!("{lead}{body}");
            if !final_newline {
                // Drop the final newline unless it ends a heredoc or a line comment.
                let last_line = text
                    .trim_end_matches('\n')
                    .rsplit('\n')
                    .next()
                    .unwrap_or("");
                let risky =
                    last_line.contains('#') || last_line.contains("//") || last_line.contains("EO");
                if !risky {
                    text = text.trim_end_matches('\n').to_owned();
                }
            }
            if crlf {
                text.replace('\n', "\r\n")
            } else {
                text
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn formatting_is_idempotent_and_keeps_the_body(input in document()) {
        // Generated documents are valid HCL; make sure of that first.
        let parsed: Result<hcl::Body, _> = hcl::from_str(&input);
        prop_assert!(parsed.is_ok(), "generator produced invalid HCL: {:?}\n{}", parsed.err(), input);
        let formatted = format_source(&input).map_err(|error| TestCaseError::fail(error.to_string()))?;
        let again = format_source(&formatted).map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(&again, &formatted, "not idempotent");
        let before: hcl::Body = hcl::from_str(&input.replace("\r\n", "\n")).unwrap();
        let after: hcl::Body = hcl::from_str(&formatted)
            .map_err(|error| TestCaseError::fail(format!("output does not decode: {error}\n{formatted}")))?;
        prop_assert_eq!(before, after);
        prop_assert!(formatted.is_empty() || (formatted.ends_with('\n') && !formatted.ends_with("\n\n")));
        prop_assert!(!formatted.contains('\r'));
    }
}
