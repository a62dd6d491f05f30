//! Resolve through the CLI (`kip lock`, `kip resolve`) against a real HTTP mirror on loopback: the test mirror of
//! real upstream builds for the happy paths, and small mirrors built in the test (with `kip mirror add`) for each
//! fault and refusal.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::http::{Fault, TestServer};
use crate::support::{Project, Run, test_mirror};

const PLATFORM: &str = "x86_64-unknown-linux-gnu";

fn index(mirror: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(mirror.join("index.json")).unwrap()).unwrap()
}

/// The newest version of `engine` in the mirror whose major is `major`.
fn newest(mirror: &Path, engine: &str, major: &str) -> String {
    let index = index(mirror);
    let mut versions: Vec<Vec<u32>> = index["engines"][engine]
        .as_object()
        .unwrap()
        .keys()
        .filter(|version| version.split('.').next() == Some(major))
        .map(|version| {
            version
                .split('.')
                .map(|part| part.parse().unwrap())
                .collect()
        })
        .collect();
    versions.sort();
    let parts: Vec<String> = versions
        .last()
        .unwrap()
        .iter()
        .map(u32::to_string)
        .collect();
    parts.join(".")
}

fn with_mirror(project: &Project, mirror: &str, args: &[&str]) -> Run {
    let mut command = project.command(args);
    command.env("KIP_MIRROR", mirror);
    project.run_with(command)
}

#[test]
fn lock_downloads_verifies_pins_and_then_works_offline() {
    let mirror = test_mirror();
    let server = TestServer::serve(&mirror);
    let project = Project::with_config("postgres \"main\" {\n  version = \"16\"\n}\n");
    let run = with_mirror(&project, &server.base_url(), &["lock"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let version = newest(&mirror, "postgres", "16");
    assert!(
        run.stdout.contains(&format!(
            "postgres \"16\" -> {version} (downloaded and verified)"
        )),
        "{}",
        run.stdout
    );
    let hash = index(&mirror)["engines"]["postgres"][&version][PLATFORM]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let lock = project.read("kip.lock");
    assert!(
        lock.contains(&format!(
            "engine \"postgres\" \"16\" {{\n  version = \"{version}\""
        )),
        "{lock}"
    );
    assert!(
        lock.contains(&format!("\"{PLATFORM}\" = \"sha256:{hash}\"")),
        "{lock}"
    );

    // The toolchain is real and runs from the store.
    let root = project
        .cache_dir()
        .join("store")
        .join(format!("sha256-{hash}"));
    let output = std::process::Command::new(root.join("bin/postgres"))
        .arg("--version")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    let short = version.trim_end_matches(".0");
    assert!(
        printed.contains(&format!("(PostgreSQL) {short}")),
        "{printed}"
    );

    // Pinned and cached: no request at all, even with the mirror gone.
    let before = server.total_requests();
    let run = with_mirror(&project, &server.base_url(), &["resolve", "--json"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert_eq!(
        server.total_requests(),
        before,
        "a pinned, cached resolution does no network I/O"
    );
    drop(server);
    let run = with_mirror(&project, "http://127.0.0.1:9/", &["resolve", "--json"]);
    assert_eq!(
        run.code,
        0,
        "offline with a pinned, cached toolchain\n{}",
        run.snapshot()
    );
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json[0]["version"], version.as_str());
    assert_eq!(json[0]["downloaded"], false);
    assert_eq!(project.kip(&["lock", "--check"]).code, 0);
}

#[test]
fn an_exact_spec_and_an_upgrade_move_between_minors() {
    let mirror = test_mirror();
    let server = TestServer::serve(&mirror);
    let index = index(&mirror);
    let mut sixteens: Vec<String> = index["engines"]["postgres"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|v| v.starts_with("16."))
        .cloned()
        .collect();
    sixteens.sort_by_key(|v| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(sixteens.len() >= 2, "the test mirror holds two 16.x minors");
    let (older, newer) = (&sixteens[sixteens.len() - 2], &sixteens[sixteens.len() - 1]);
    let older_minor = older.rsplit_once('.').unwrap().0;

    // "16.13" resolves to the newest 16.13.x, not to 16.14.
    let project = Project::with_config(&format!(
        "postgres \"main\" {{\n  version = \"{older_minor}\"\n}}\n"
    ));
    let run = with_mirror(&project, &server.base_url(), &["lock"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains(&format!("-> {older} ")),
        "{}",
        run.stdout
    );

    // A pin to the older minor under spec "16" wins over the newer one, until --upgrade moves it.
    let hash = index["engines"]["postgres"][older][PLATFORM]["sha256"]
        .as_str()
        .unwrap();
    project.write("kip.hcl", "postgres \"main\" {\n  version = \"16\"\n}\n");
    project.write(
        "kip.lock",
        format!("engine \"postgres\" \"16\" {{\n  version = \"{older}\"\n  hashes = {{\n    \"{PLATFORM}\" = \"sha256:{hash}\"\n  }}\n}}\n"),
    );
    let run = with_mirror(&project, &server.base_url(), &["resolve"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains(&format!("-> {older} (cached)")),
        "the pin wins\n{}",
        run.stdout
    );
    let run = with_mirror(
        &project,
        &server.base_url(),
        &["lock", "--upgrade", "postgres"],
    );
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout.contains(&format!("-> {newer} ")),
        "{}",
        run.stdout
    );
    assert!(
        project
            .read("kip.lock")
            .contains(&format!("version = \"{newer}\""))
    );
}

#[test]
fn lock_check_and_locked_refuse_a_missing_or_stale_pin() {
    let mirror = test_mirror();
    let project = Project::with_config("valkey \"cache\" {\n  version = \"9\"\n}\n");
    let run = project.kip(&["lock", "--check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("kip.lock lacks a pin for valkey \"9\""),
        "{}",
        run.stderr
    );
    let run = project.kip(&["resolve", "--locked"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("--locked forbids adding one"),
        "{}",
        run.stderr
    );
    assert!(
        !project.path().join("kip.lock").exists(),
        "--locked writes nothing"
    );

    // A local directory works as a mirror too.
    assert_eq!(
        with_mirror(&project, mirror.to_str().unwrap(), &["lock"]).code,
        0
    );
    assert_eq!(project.kip(&["lock", "--check"]).code, 0);
    project.write("kip.hcl", "valkey \"cache\" {\n  version = \"8\"\n}\n");
    let run = project.kip(&["lock", "--check"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("lacks a pin for valkey \"8\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("pins valkey \"9\", which the configuration no longer declares"),
        "{}",
        run.stderr
    );
    // `kip lock` drops the stale pin and adds the new one.
    assert_eq!(
        with_mirror(&project, mirror.to_str().unwrap(), &["lock"]).code,
        0
    );
    let lock = project.read("kip.lock");
    assert!(
        lock.contains("engine \"valkey\" \"8\"") && !lock.contains("engine \"valkey\" \"9\""),
        "{lock}"
    );
}

#[test]
fn a_per_engine_mirror_and_a_bindir_override_the_default() {
    let mirror = test_mirror();
    let server = TestServer::serve(&mirror);
    let project = Project::with_config(
        "nats \"bus\" {\n  version = \"2\"\n}\n\npostgres \"main\" {\n  version = \"16\"\n}\n",
    );
    let bindir = project.path().join("pg/bin");
    std::fs::create_dir_all(&bindir).unwrap();
    let mut command = project.command(&["resolve", "--json"]);
    command
        .env("KIP_MIRROR", "http://127.0.0.1:9/nothing-here/")
        .env("KIP_NATS_MIRROR", server.base_url())
        .env("KIP_POSTGRES_BINDIR", &bindir);
    let run = project.run_with(command);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let postgres = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["engine"] == "postgres")
        .unwrap();
    assert_eq!(postgres["version"], "dev");
    assert_eq!(
        postgres["bin"],
        bindir
            .to_str()
            .unwrap()
            .replace(project.path().to_str().unwrap(), "[PROJECT]")
    );
    let nats = json
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["engine"] == "nats")
        .unwrap();
    assert_eq!(nats["downloaded"], true);
    assert!(
        server.requests("index.json") == 1,
        "the per-engine mirror was used"
    );
    assert!(
        !project.read("kip.lock").contains("postgres"),
        "a BINDIR toolchain is not pinned"
    );
}

// ---- faults and refusals, against small mirrors built in the test ----------------------------------------

/// A tar.gz with `bin/tool` (executable) and a relative symlink, or with whatever `entries` say.
fn archive(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o755);
    builder
        .append_data(&mut header, "bin/tool", content.as_bytes())
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder
        .append_link(&mut link, "bin/tool-link", "tool")
        .unwrap();
    builder
        .into_inner()
        .unwrap()
        .finish()
        .unwrap()
        .flush()
        .unwrap();
    path
}

/// An archive whose one entry escapes its directory through `..`.
fn evil_archive(dir: &Path) -> PathBuf {
    let path = dir.join("evil.tar.gz");
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut header = tar::Header::new_old();
    let name = b"../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    encoder.write_all(header.as_bytes()).unwrap();
    let mut block = [0u8; 512];
    block[..4].copy_from_slice(b"evil");
    encoder.write_all(&block).unwrap();
    encoder.write_all(&[0u8; 1024]).unwrap();
    encoder.finish().unwrap();
    path
}

/// A mirror with NATS 2.0.1 and 2.1.0 (small synthetic archives), built with `kip mirror add`.
fn small_mirror(project: &Project) -> PathBuf {
    let work = project.home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mirror = project.home.path().join("mirror");
    for (version, content) in [("2.0.1", "old"), ("2.1.0", "new")] {
        let file = archive(&work, &format!("nats-{version}.tar.gz"), content);
        let mut command =
            project.command(&["mirror", "add", "nats", version, file.to_str().unwrap()]);
        command
            .arg("--mirror")
            .arg(&mirror)
            .arg("--platform")
            .arg(PLATFORM);
        let run = project.run_with(command);
        assert_eq!(run.code, 0, "{}", run.snapshot());
    }
    mirror
}

fn nats_project() -> Project {
    Project::with_config("nats \"bus\" {\n  version = \"2\"\n}\n")
}

fn store_entries(project: &Project) -> Vec<String> {
    let store = project.cache_dir().join("store");
    let mut names: Vec<String> = std::fs::read_dir(&store)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|name| name.starts_with("sha256-"));
    names.sort();
    names
}

fn tmp_is_empty(project: &Project) -> bool {
    std::fs::read_dir(project.cache_dir().join("store/.tmp"))
        .map_or(true, |mut entries| entries.next().is_none())
}

#[test]
fn transient_http_errors_are_retried() {
    let project = nats_project();
    let mirror = small_mirror(&project);
    let server = TestServer::serve(&mirror);
    let path = format!("nats/2.1.0/{PLATFORM}/nats-2.1.0.tar.gz");
    server.fail(&path, Fault::Status(503), 2);
    server.fail("index.json", Fault::Status(500), 1);
    let run = with_mirror(&project, &server.base_url(), &["lock"]);
    assert_eq!(run.code, 0, "{}", run.snapshot());
    assert!(
        run.stdout
            .contains("nats \"2\" -> 2.1.0 (downloaded and verified)"),
        "{}",
        run.stdout
    );
    assert_eq!(server.requests(&path), 3);
    let store = project.cache_dir().join("store");
    let tool = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("sha256-"))
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read_to_string(tool.join("bin/tool-link")).unwrap(),
        "new"
    );
}

#[test]
fn a_hash_mismatch_names_both_hashes_and_leaves_nothing() {
    let project = nats_project();
    let mirror = small_mirror(&project);
    // The mirror now serves other bytes (of the same size) than its index promises.
    let path = mirror.join(format!("nats/2.1.0/{PLATFORM}/nats-2.1.0.tar.gz"));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let expected = index(&mirror)["engines"]["nats"]["2.1.0"][PLATFORM]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = TestServer::serve(&mirror);
    let run = with_mirror(&project, &server.base_url(), &["lock"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("sha256 mismatch"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("expected {expected}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("computed "), "{}", run.stderr);
    assert!(
        run.stderr.contains("nats-2.1.0.tar.gz"),
        "the error names the artifact\n{}",
        run.stderr
    );
    assert!(store_entries(&project).is_empty(), "nothing in the cache");
    assert!(tmp_is_empty(&project), "no temp files left");
    assert!(
        !project.path().join("kip.lock").exists(),
        "no pin for what failed"
    );
}

#[test]
fn an_unsafe_archive_is_refused_and_leaves_nothing() {
    let project = nats_project();
    let work = project.home.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mirror = project.home.path().join("mirror");
    let evil = evil_archive(&work);
    let mut command = project.command(&["mirror", "add", "nats", "2.0.0", evil.to_str().unwrap()]);
    command
        .arg("--mirror")
        .arg(&mirror)
        .arg("--platform")
        .arg(PLATFORM);
    assert_eq!(project.run_with(command).code, 0);
    let run = with_mirror(&project, mirror.to_str().unwrap(), &["lock"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(
        run.stderr.contains("../escaped"),
        "the error names the entry\n{}",
        run.stderr
    );
    assert!(store_entries(&project).is_empty());
    assert!(
        !project.cache_dir().join("store/escaped").exists()
            && !project.cache_dir().join("escaped").exists()
    );
}

#[test]
fn a_truncated_download_is_retried_then_reported() {
    let project = nats_project();
    let mirror = small_mirror(&project);
    let server = TestServer::serve(&mirror);
    let path = format!("nats/2.1.0/{PLATFORM}/nats-2.1.0.tar.gz");
    server.fail_always(&path, Fault::Truncate { sent: 10 });
    let run = with_mirror(&project, &server.base_url(), &["lock"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(server.requests(&path) > 1, "retried");
    assert!(run.stderr.contains("nats-2.1.0.tar.gz"), "{}", run.stderr);
    assert!(store_entries(&project).is_empty() && tmp_is_empty(&project));
}

#[test]
fn an_unreachable_mirror_and_a_missing_version_are_clear() {
    let project = nats_project();
    let run = with_mirror(&project, "http://127.0.0.1:9/", &["lock"]);
    assert_eq!(run.code, 1, "{}", run.snapshot());
    assert!(run.stderr.contains("127.0.0.1:9"), "{}", run.stderr);
    let run = project.kip(&["lock"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("no mirror is configured for nats"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("KIP_MIRROR"), "{}", run.stderr);

    let mirror = small_mirror(&project);
    project.write("kip.hcl", "nats \"bus\" {\n  version = \"2.5\"\n}\n");
    let run = with_mirror(&project, mirror.to_str().unwrap(), &["lock"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("the mirror has no nats matching \"2.5\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("it has: 2.0.1, 2.1.0"),
        "the versions it has are listed\n{}",
        run.stderr
    );
}

#[test]
fn a_pin_the_mirror_contradicts_is_refused() {
    let project = nats_project();
    let mirror = small_mirror(&project);
    let other = "0".repeat(64);
    project.write(
        "kip.lock",
        format!("engine \"nats\" \"2\" {{\n  version = \"2.0.1\"\n  hashes = {{\n    \"{PLATFORM}\" = \"sha256:{other}\"\n  }}\n}}\n"),
    );
    let run = with_mirror(&project, mirror.to_str().unwrap(), &["resolve"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("kip.lock pins nats 2.0.1 with sha256 {other}")),
        "{}",
        run.stderr
    );
    assert!(store_entries(&project).is_empty());
}

#[test]
fn malformed_index_and_lock_name_the_position() {
    let project = nats_project();
    let mirror = project.home.path().join("broken");
    std::fs::create_dir_all(&mirror).unwrap();
    std::fs::write(
        mirror.join("index.json"),
        "{\n  \"format\": 1,\n  \"engines\": [\n}\n",
    )
    .unwrap();
    let run = with_mirror(&project, mirror.to_str().unwrap(), &["lock"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("line 4"), "{}", run.stderr);

    project.write("kip.lock", "engine \"nats\" \"2\" {\n  version = 2\n}\n");
    let run = project.kip(&["lock", "--check"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("kip.lock:2:13"), "{}", run.stderr);
    // Plan and apply say so before they show a plan: a drift check must not pass on a lock apply refuses.
    for args in [
        &["plan", "--detailed-exitcode"][..],
        &["apply", "--auto-approve"][..],
    ] {
        let run = with_mirror(&project, mirror.to_str().unwrap(), args);
        assert_eq!(run.code, 1, "kip {args:?}: {}", run.stderr);
        assert!(run.stderr.contains("kip.lock:2:13"), "{}", run.stderr);
        assert!(!run.stdout.contains("Plan:"), "{}", run.stdout);
    }
    assert!(!project.dir.path().join(".kip/state.json").exists());
}

#[test]
fn two_kips_resolving_the_same_artifact_download_it_once() {
    let project = nats_project();
    let mirror = small_mirror(&project);
    let server = TestServer::serve(&mirror);
    let path = format!("nats/2.1.0/{PLATFORM}/nats-2.1.0.tar.gz");
    // Slow the download down so that the two runs overlap.
    server.fail(
        &path,
        Fault::Delay(std::time::Duration::from_millis(500)),
        1,
    );
    let spawn = || {
        let mut command = project.command(&["resolve"]);
        command
            .env("KIP_MIRROR", server.base_url())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command.spawn().unwrap()
    };
    let (first, second) = (spawn(), spawn());
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(server.requests(&path), 1, "one download for two resolvers");
    assert_eq!(store_entries(&project).len(), 1);
}

/// A new project's apply reads its mirror's index once however many instances resolve against it: the fetch starts
/// beside the plan and every instance's resolve shares it (each fetched its own before). A fetch that failed is not
/// kept: the resolve that needs the index tries again, and the apply goes on.
#[test]
fn a_new_projects_instances_share_one_fetch_of_the_index_and_a_failed_one_is_tried_again() {
    let stack = crate::apply::Stack::new(
        "postgres \"a\" {\n  version = \"16\"\n}\n\npostgres \"b\" {\n  version = \"16\"\n}\n\n\
         valkey \"cache\" {\n  version = \"9\"\n}\n",
    );
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.server.requests("index.json"),
        1,
        "one fetch of the index"
    );
    stack.ok(&["destroy", "--auto-approve"]);

    // Without kip.lock the pins go, and the index is read again; its first answer is a 404, not retried by the
    // fetch itself: whichever of the read-ahead and the first resolve got it, the next one asks again.
    std::fs::remove_file(stack.project.path().join("kip.lock")).unwrap();
    stack.server.fail("index.json", Fault::Status(404), 1);
    stack.ok(&["apply", "--auto-approve"]);
    assert_eq!(
        stack.server.requests("index.json"),
        3,
        "the failed fetch and one more"
    );
    assert!(stack.project.read("kip.lock").contains("valkey"));
}
