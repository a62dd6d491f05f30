//! Plan and apply (issue 5), measured by driving the real release `kip` binary in temp projects against the test
//! mirror, with the toolchain and the initdb template cached in a shared cache as on a developer's machine:
//!
//! 1. a new PostgreSQL 16 instance (one role, one database) from `kip apply --auto-approve` start to ready and
//!    converged, from the cached template and on the initdb path (an empty templates dir), split into its steps
//!    by the stderr step lines, kip's debug logs and the supervisor's log; plus the data-dir copy alone, in process;
//! 2. the same instance with nothing declared in it, against PostgreSQL's own start on a copy of the template
//!    (the floor) and against `initdb` + start by hand (the cold path), with kip's own cold path, for the table
//!    of kip against each engine's own start ([`crate::floor`]), and the same instance added to a project that
//!    already runs one;
//! 3. a no-op `kip plan` against a running instance with 100 declared objects (roles, databases, grants);
//! 4. `kip plan` for 1,000 declared roles from empty state (no engine is contacted);
//! 5. `kip apply` of 1,000 roles added to a running instance.
//!
//! Every project is destroyed when its case ends (projects run `kip destroy` when dropped).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kip::{Harness, Project, Run, field, open_dir};

pub(crate) use crate::report::{header, ms, row};

/// The test mirror (`scripts/test-mirror.sh`): `KIP_TEST_MIRROR` or `~/.cache/kip/test-mirror`.
pub(crate) fn test_mirror() -> PathBuf {
    let mirror = std::env::var_os("KIP_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kip/test-mirror")
        });
    assert!(
        mirror.join("index.json").exists(),
        "build the test mirror first: scripts/test-mirror.sh"
    );
    mirror
}

/// Runs every case; `runs` overrides the per-case defaults (7 for the slow cases, 21 for the fast ones).
pub fn run(runs: Option<usize>) {
    let harness = Harness::new(&test_mirror());
    println!(
        "\napply: the real kip ({}) in temp projects under {}",
        harness.kip.display(),
        harness.root.display()
    );
    new_instance(&harness, runs.unwrap_or(7));
    noop_plan(&harness, runs.unwrap_or(21));
    plan_roles(&harness, runs.unwrap_or(21));
    apply_roles(&harness, runs.unwrap_or(7));
    against_floor(&harness, runs.unwrap_or(7));
}

const ONE_ROLE_ONE_DATABASE: &str = r#"postgres "main" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}
"#;

/// The steps of a new instance's apply, from the step lines kip prints on stderr and its debug logs.
#[derive(Default)]
struct Steps {
    total: Vec<Duration>,
    start_check_plan: Vec<Duration>,
    resolve: Vec<Duration>,
    provision: Vec<Duration>,
    initdb: Vec<Duration>,
    spawn_secure: Vec<Duration>,
    postgres_ready: Vec<Duration>,
    converge: Vec<Duration>,
    create_database: Vec<Duration>,
    finish: Vec<Duration>,
}

impl Steps {
    fn add(&mut self, run: &Run, project: &Project<'_>) {
        let step = |what: &str| format!("postgres.main: {what}");
        self.total.push(run.elapsed);
        self.start_check_plan
            .push(run.between(None, Some(&step("resolving"))));
        self.resolve
            .push(run.between(Some(&step("resolving")), Some(&step("provisioning"))));
        self.provision
            .push(run.between(Some(&step("provisioning")), Some(&step("starting"))));
        if let Some(initdb) = run.logged_elapsed("initdb built a template") {
            self.initdb.push(initdb);
        }
        self.spawn_secure
            .push(run.between(Some(&step("starting")), Some(&step("converging"))));
        self.converge
            .push(run.between(Some(&step("converging")), Some(&step("ready"))));
        if let Some(create) = run.logged_elapsed("phase=Databases") {
            self.create_database.push(create);
        }
        self.finish.push(run.between(Some(&step("ready")), None));
        // The supervisor inherits KIP_LOG and says how long the server took from spawn to its socket.
        let log = project.supervisor_log();
        if let Some(ready) = log
            .lines()
            .rev()
            .filter_map(|line| field(line, "ready after "))
            .find_map(|number| number.parse::<u64>().ok())
        {
            self.postgres_ready.push(Duration::from_millis(ready));
        }
    }

    fn print(&self, title: &str) {
        header(title);
        row(
            "kip apply --auto-approve, start to ready and converged",
            &self.total,
        );
        row(
            "  process start, config check, plan, supervisor spawn",
            &self.start_check_plan,
        );
        row(
            "  resolve (cached toolchain; new project: one GET of the index)",
            &self.resolve,
        );
        row(
            "  provision: template lookup + data-dir copy + config + state write",
            &self.provision,
        );
        if !self.initdb.is_empty() {
            row("    of which initdb (kip's debug log)", &self.initdb);
        }
        row(
            "  postgres start, ready, after-start (own superuser password)",
            &self.spawn_secure,
        );
        if !self.postgres_ready.is_empty() {
            row(
                "    of which postgres spawn -> socket (supervisor's log)",
                &self.postgres_ready,
            );
        }
        row("  converge: CREATE ROLE, CREATE DATABASE", &self.converge);
        if !self.create_database.is_empty() {
            row(
                "    of which CREATE DATABASE (kip's debug log)",
                &self.create_database,
            );
        }
        row("  final state + kip.lock write, exit", &self.finish);
    }
}

fn new_instance(harness: &Harness, runs: usize) {
    // The first apply downloads and unpacks the toolchain and builds the template into the shared cache; this
    // project stays up until the case ends, so that its files are not deleted just before the timed runs.
    let warm = harness.project(ONE_ROLE_ONE_DATABASE);
    let first = warm.expect(0, &["apply", "--auto-approve"]);
    println!(
        "  (first apply, downloading and unpacking the toolchain and running initdb: {})",
        ms(first.elapsed)
    );

    // Template path: a new project each run, the template cached. The instances keep running until the case
    // ends (nothing is deleted between runs). After each apply, the same copy provision makes (the same function,
    // the same owner) is timed alone in process, so that both see the filesystem in the same state.
    let template = template_dir(&harness.cache.join("templates"));
    let (files, bytes) = tree_size(&template);
    let copies = harness.root.join("copies");
    open_dir(&copies);
    let mut cached = Steps::default();
    let mut copy_times = Vec::new();
    let mut projects = Vec::new();
    for index in 0..runs {
        let project = harness.project(ONE_ROLE_ONE_DATABASE).with_log("debug");
        let run = project.expect(0, &["apply", "--auto-approve"]);
        assert!(
            run.stdout.contains("Apply complete! Resources: 3 added"),
            "{}",
            run.describe()
        );
        cached.add(&run, &project);
        let run_as = project.run_as();
        let target = copies.join(format!("{index}")).join("data");
        let started = Instant::now();
        kip_providers::postgres::provision(&template, &target, run_as.as_ref(), None)
            .expect("copy the template");
        copy_times.push(started.elapsed());
        projects.push(project);
    }
    cached.print(&format!(
        "new PostgreSQL 16 instance (1 role, 1 database), template cached (KIP_LOG=debug, {runs} new projects)"
    ));
    row(
        &format!(
            "  in process, after each apply: copy the template ({files} files, {:.1} MB)",
            bytes as f64 / 1e6
        ),
        &copy_times,
    );
    drop(projects);

    // The developer's loop in one project: `kip destroy`, then `kip apply` again. Destroy deletes the old data
    // dir (~1,000 files) just before apply copies a new one.
    let mut again = Steps::default();
    let project = harness.project(ONE_ROLE_ONE_DATABASE).with_log("debug");
    project.expect(0, &["apply", "--auto-approve"]);
    for _ in 0..runs {
        project.expect(0, &["destroy", "--auto-approve"]);
        let run = project.expect(0, &["apply", "--auto-approve"]);
        again.add(&run, &project);
    }
    again.print(&format!(
        "the same, right after `kip destroy` of the project's previous instance ({runs} runs)"
    ));
    drop(project);
    drop(warm);

    // initdb path: a fresh cache each run whose store is the shared one (the toolchain stays cached), so the
    // templates dir is empty.
    let mut initdb = Steps::default();
    let mut projects = Vec::new();
    for index in 0..runs {
        let cache = harness.root.join(format!("cache-initdb-{index}"));
        open_dir(&cache);
        std::os::unix::fs::symlink(harness.cache.join("store"), cache.join("store"))
            .expect("link the shared store");
        let project = harness
            .project(ONE_ROLE_ONE_DATABASE)
            .with_cache(cache)
            .with_log("debug");
        let run = project.expect(0, &["apply", "--auto-approve"]);
        assert!(
            run.at("initdb built a template").is_some(),
            "the initdb path ran initdb\n{}",
            run.describe()
        );
        initdb.add(&run, &project);
        projects.push(project);
    }
    initdb.print(&format!(
        "new PostgreSQL 16 instance, initdb path: empty templates dir, toolchain cached ({runs} runs)"
    ));
}

const EMPTY_INSTANCE: &str = r#"postgres "main" {
  version = "16"
}
"#;

/// A second instance beside [`EMPTY_INSTANCE`], in the same project.
const ADDED_INSTANCE: &str = r#"postgres "added" {
  version = "16"
}
"#;

/// [`ADDED_INSTANCE`] with issue 12's objects: one role and one database.
const ADDED_CONVERGED: &str = r#"postgres "added" {
  version = "16"
  role "app" { login = true }
  database "shop" { owner = "app" }
}
"#;

/// A fresh instance against PostgreSQL's own start (kip issue 12). Each run, one after the other so that a single
/// server runs at a time and all four see the machine alike: `kip apply` of an instance with nothing declared in
/// a new project (template cached), the same with one role and one database, the bare `postgres` on a copy of the
/// template to `SELECT 1` (the floor), `kip apply` with an empty templates dir (kip's cold path), and `initdb`,
/// start and `SELECT 1` by hand (the bare cold path). No KIP_LOG: logging is work the bare starts do not do. Each
/// step starts after a `sync`, untimed, so that none pays for the writeback of the one before (a destroy deletes
/// a data dir just before); the applies of new projects also wait until no spare is being prepared, as the added
/// ones do: the spare the previous new project's provisioning asked for is copied in the background right after
/// it, and an apply timed during that copy shares the two cores and the disk with it.
fn against_floor(harness: &Harness, runs: usize) {
    // A warm cache, and the account kip runs this project's PostgreSQL as, which the bare starts use too (postgres
    // refuses root). kip removes a project's account with its last instance, so this project (its server idle)
    // stays until the case ends.
    let account_holder = harness.project(EMPTY_INSTANCE);
    account_holder.expect(0, &["apply", "--auto-approve"]);
    let run_as = account_holder.run_as();
    let template = template_dir(&harness.cache.join("templates"));
    let toolchain = crate::floor::postgres_toolchain(&harness.cache.join("store"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let scratch = harness.root.join("floor");
    open_dir(&scratch);

    let mut kip = Vec::new();
    let mut kip_converged = Vec::new();
    let mut kip_cold = Vec::new();
    let mut kip_added = Vec::new();
    let mut kip_added_converged = Vec::new();
    let mut copies = Vec::new();
    let mut floor = Vec::new();
    let mut cold = Vec::new();
    for index in 0..runs {
        crate::floor::quiet();
        let project = harness.project(EMPTY_INSTANCE);
        kip.push(project.expect(0, &["apply", "--auto-approve"]).elapsed);
        drop(project);

        crate::floor::quiet();
        let project = harness.project(ONE_ROLE_ONE_DATABASE);
        let run = project.expect(0, &["apply", "--auto-approve"]);
        assert!(
            run.stdout.contains("Resources: 3 added"),
            "{}",
            run.describe()
        );
        kip_converged.push(run.elapsed);
        drop(project);

        // The same instance added to the project that already runs one (its account, kip.lock and supervisor
        // exist, and the spare the last apply asked for is ready), alone and with issue 12's role and database (a
        // developer adding a database server to their project).
        kip_added.push(time_added(&account_holder, ADDED_INSTANCE, 1));
        kip_added_converged.push(time_added(&account_holder, ADDED_CONVERGED, 3));

        crate::floor::quiet();
        let bare = crate::floor::postgres_floor(
            &runtime,
            &toolchain,
            &template,
            &scratch.join(format!("floor-{index}")),
            run_as.as_ref(),
        );
        copies.push(bare.copy);
        floor.push(bare.start);

        // kip's cold path: a fresh cache whose store is the shared one (the toolchain stays cached), so the
        // templates dir is empty.
        let cache = harness.root.join(format!("cache-cold-{index}"));
        open_dir(&cache);
        std::os::unix::fs::symlink(harness.cache.join("store"), cache.join("store"))
            .expect("link the shared store");
        crate::floor::settle();
        let project = harness.project(EMPTY_INSTANCE).with_cache(cache.clone());
        kip_cold.push(project.expect(0, &["apply", "--auto-approve"]).elapsed);
        drop(project);
        let _ = std::fs::remove_dir_all(&cache);

        crate::floor::settle();
        cold.push(crate::floor::postgres_cold_path(
            &runtime,
            &toolchain,
            &scratch.join(format!("cold-{index}")),
            run_as.as_ref(),
        ));
    }
    drop(account_holder);
    header(&format!(
        "a fresh PostgreSQL 16 against its own start: kip apply vs the bare postgres, cached and cold ({runs} runs each)"
    ));
    row(
        "kip apply --auto-approve, nothing declared, template cached",
        &kip,
    );
    row(
        "kip apply --auto-approve, 1 role + 1 database, template cached",
        &kip_converged,
    );
    row(
        "kip apply --auto-approve, nothing declared, added to a project that runs one",
        &kip_added,
    );
    row(
        "kip apply --auto-approve, 1 role + 1 database, added to a project that runs one",
        &kip_added_converged,
    );
    row(
        "kip apply --auto-approve, nothing declared, empty templates dir (initdb)",
        &kip_cold,
    );
    row(
        "bare: copy of the template + pg_hba.conf (not in its start)",
        &copies,
    );
    row(
        &format!(
            "bare postgres -D <copy> as {}, unix socket, spawn to SELECT 1",
            run_as
                .as_ref()
                .map_or("kip's own user", |run_as| run_as.user.as_str())
        ),
        &floor,
    );
    row(
        "bare initdb --no-sync + postgres + SELECT 1 (the cold path by hand)",
        &cold,
    );
    // Issue 12's case is the one with a role and a database; the other two say what the instance alone costs.
    crate::floor::against_floor_as(
        "PostgreSQL: fresh instance with 1 role + 1 database, kip apply to ready and converged",
        &kip_converged,
        &floor,
        "≤ 1.5× (issue 12; bare start to a first query ~75 ms)",
    );
    crate::floor::against_floor_as(
        "PostgreSQL: fresh instance, nothing declared, kip apply to ready",
        &kip,
        &floor,
        "reported",
    );
    crate::floor::against_floor_as(
        "PostgreSQL: an instance added to a running project, nothing declared, kip apply to ready",
        &kip_added,
        &floor,
        "reported",
    );
    crate::floor::against_floor_as(
        "PostgreSQL: an instance with 1 role + 1 database added to a running project, kip apply to ready and converged",
        &kip_added_converged,
        &floor,
        "≤ 1.5× (issue 12, the instance in a project that has its account, kip.lock and supervisor)",
    );
    let cold_label = "bare cold path: initdb + start";
    crate::floor::against_cold_path(
        "PostgreSQL: fresh instance, nothing declared, kip apply to ready",
        &kip,
        cold_label,
        &cold,
    );
    crate::floor::against_cold_path(
        "PostgreSQL: kip's cold path (empty templates dir: initdb), kip apply to ready",
        &kip_cold,
        cold_label,
        &cold,
    );
}

/// The time of `kip apply` adding `added` beside [`EMPTY_INSTANCE`] in `project`, which runs it, from a quiet
/// machine; the apply must add `resources`. The instance is then applied away again, untimed.
fn time_added(project: &Project<'_>, added: &str, resources: usize) -> Duration {
    crate::floor::quiet();
    project.write_config(&format!("{EMPTY_INSTANCE}{added}"));
    let run = project.expect(0, &["apply", "--auto-approve"]);
    assert!(
        run.stdout
            .contains(&format!("Resources: {resources} added")),
        "{}",
        run.describe()
    );
    project.write_config(EMPTY_INSTANCE);
    project.expect(0, &["apply", "--auto-approve"]);
    run.elapsed
}

/// The built template under `templates` (the directory holding PG_VERSION and kip's bootstrap password: a data
/// dir kip prepared from it ahead of time has no bootstrap file).
fn template_dir(templates: &Path) -> PathBuf {
    std::fs::read_dir(templates)
        .expect("the templates dir")
        .flatten()
        .map(|entry| entry.path())
        // Spares live under `.spares/`, never at the top; a kip from before the closed templates left no
        // bootstrap file, and its template is still the one to copy.
        .find(|path| path.join("PG_VERSION").is_file())
        .expect("a built template")
}

fn tree_size(path: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => {
                let (inner_files, inner_bytes) = tree_size(&entry.path());
                files += inner_files;
                bytes += inner_bytes;
            }
            Ok(_) => {
                files += 1;
                bytes += entry.metadata().map_or(0, |metadata| metadata.len());
            }
            Err(_) => {}
        }
    }
    (files, bytes)
}

/// A postgres 16 instance declaring `roles` login roles, `databases` databases owned by them and `grants` grants
/// of ALL on a database to its owner.
fn objects_config(roles: usize, databases: usize, grants: usize, login: bool) -> String {
    let mut config = String::from("postgres \"main\" {\n  version = \"16\"\n");
    for role in 0..roles {
        if login {
            config.push_str(&format!("  role \"r{role:04}\" {{ login = true }}\n"));
        } else {
            config.push_str(&format!("  role \"r{role:04}\" {{}}\n"));
        }
    }
    for database in 0..databases {
        config.push_str(&format!(
            "  database \"d{database:04}\" {{ owner = \"r{:04}\" }}\n",
            database % roles.max(1)
        ));
    }
    for grant in 0..grants {
        config.push_str(&format!(
            "  grant {{\n    role       = \"r{:04}\"\n    database   = \"d{:04}\"\n    privileges = [\"ALL\"]\n  }}\n",
            grant % roles.max(1),
            grant % databases.max(1)
        ));
    }
    config.push_str("}\n");
    config
}

fn noop_plan(harness: &Harness, runs: usize) {
    let config = objects_config(34, 33, 33, true);
    let project = harness.project(&config);
    let applied = project.expect(0, &["apply", "--auto-approve"]);
    assert!(
        applied.stdout.contains("Plan: 101 to add"),
        "100 objects and the instance\n{}",
        applied.describe()
    );
    let check = project.expect(0, &["plan", "--detailed-exitcode"]);
    assert!(check.stdout.contains("No changes."), "{}", check.describe());

    let mut refreshed = Vec::new();
    let mut from_state = Vec::new();
    let mut lint = Vec::new();
    for _ in 0..runs {
        refreshed.push(project.expect(0, &["plan", "--detailed-exitcode"]).elapsed);
        from_state.push(
            project
                .expect(0, &["plan", "--detailed-exitcode", "--refresh=false"])
                .elapsed,
        );
        lint.push(project.expect(0, &["lint"]).elapsed);
    }
    header(
        "no-op kip plan, running instance with 100 declared objects (34 roles, 33 databases, 33 grants)",
    );
    row(
        "kip plan --detailed-exitcode (refresh: reads the live server)",
        &refreshed,
    );
    row("kip plan --refresh=false (trusts the state)", &from_state);
    row("kip lint (process start + config check only)", &lint);
    println!(
        "  (the apply that created them took {}: 33 CREATE DATABASE)",
        ms(applied.elapsed)
    );
}

fn plan_roles(harness: &Harness, runs: usize) {
    let project = harness.project(&objects_config(1_000, 0, 0, true));
    let requests = harness.mirror_requests();
    let mut plan = Vec::new();
    let mut lint = Vec::new();
    for _ in 0..runs {
        let run = project.expect(2, &["plan", "--detailed-exitcode"]);
        assert!(
            run.stdout.contains("Plan: 1001 to add"),
            "{}",
            run.describe()
        );
        plan.push(run.elapsed);
        lint.push(project.expect(0, &["lint"]).elapsed);
    }
    assert_eq!(
        harness.mirror_requests(),
        requests,
        "plan from empty state contacts nothing"
    );
    assert!(
        !project.dir.join(".kip/supervisor.sock").exists(),
        "plan starts no supervisor"
    );
    header("kip plan, 1,000 declared login roles, empty state");
    row(
        "kip plan --detailed-exitcode (1,001 creates rendered)",
        &plan,
    );
    row("kip lint (process start + config check only)", &lint);
}

fn apply_roles(harness: &Harness, runs: usize) {
    for login in [true, false] {
        let base = objects_config(0, 0, 0, login);
        let roles = objects_config(1_000, 0, 0, login);
        let project = harness.project(&base).with_log("debug");
        project.expect(0, &["apply", "--auto-approve"]);
        let mut total = Vec::new();
        let mut until_converge = Vec::new();
        let mut converge = Vec::new();
        let mut batch = Vec::new();
        let mut finish = Vec::new();
        let mut reset = Vec::new();
        for _ in 0..runs {
            project.write_config(&roles);
            let run = project.expect(0, &["apply", "--auto-approve"]);
            assert!(
                run.stdout
                    .contains("Resources: 1000 added, 0 changed, 0 destroyed"),
                "{}",
                run.describe()
            );
            let converging = "postgres.main: converging";
            total.push(run.elapsed);
            until_converge.push(run.between(None, Some(converging)));
            converge.push(run.between(Some(converging), Some("postgres.main: ready")));
            if let Some(roles) = run.logged_elapsed("phase=Roles") {
                batch.push(roles);
            }
            finish.push(run.between(Some("postgres.main: ready"), None));
            // Back to no roles (not timed as the case, reported for reference).
            project.write_config(&base);
            let dropped = project.expect(0, &["apply", "--auto-approve"]);
            assert!(
                dropped.stdout.contains("1000 destroyed"),
                "{}",
                dropped.describe()
            );
            reset.push(dropped.elapsed);
        }
        let kind = if login {
            "login roles (generated passwords)"
        } else {
            "roles without login (no password)"
        };
        header(&format!(
            "kip apply of 1,000 {kind} added to a running instance (KIP_LOG=debug)"
        ));
        row("kip apply --auto-approve", &total);
        row(
            "  process start, check, plan (refresh: reads the live server)",
            &until_converge,
        );
        row("  converge", &converge);
        row(
            "    of which the role batch on the server (kip's debug log)",
            &batch,
        );
        row("  state write, exit", &finish);
        row(
            "(then dropping the 1,000 roles again, for reference)",
            &reset,
        );
    }
}
