//! kip at 100, 1,000 and 10,000 real objects, in the shapes Terraform is measured at with `null_resource`s
//! (issue 12): the Terraform workflow's steps, one new project per run, with the release `kip` against the test
//! mirror and the shared cache warm (toolchains and initdb template, as on a developer's machine; kip has no
//! `init`, its toolchains resolve during apply).
//!
//! Each run times, from spawn to exit and with the peak RSS of each process:
//! `kip lint` (validate), `kip plan` with no state (plan from empty: no engine is contacted),
//! `kip apply --auto-approve` (every instance started and every object converged), `kip plan --detailed-exitcode`
//! after it (the no-op plan: it reads every live object back from the engines and must find nothing to do),
//! `kip plan --refresh=false` after it (trusts the state, reported beside the steps) and `kip destroy --auto-approve`.
//! Before each step the benchmark waits, untimed, for the spare copy an apply starts in the background to finish
//! ([`crate::floor::quiet`]): each step is timed on a quiet machine, as Terraform's are. The steps that change
//! nothing (lint, the plan from empty, the no-op plans) run [`READ_ONLY_REPEATS`] times in each run, each one a
//! sample: kip's take milliseconds, and on a shared 2-core machine one sample per run left medians that moved by
//! half between runs (hyperfine, on the same binary, gave 12.4 ms for a plan the single samples put at 19.5 ms).
//! Those samples run kip alone; their peak RSS comes from one more run under `/usr/bin/time`, untimed, because
//! the wrapper's fork and exec cost ~3 ms here. Apply and destroy run once, under it (their times include it).
//! Terraform's steps take seconds, and are timed once per run, under it.
//!
//! Two shapes:
//!
//! 1. **postgres-roles**: one fresh PostgreSQL 16 instance and N login roles (`role "r00001" { login = true }`,
//!    each with a generated password), N + 1 objects: the issue's target rows ("a fresh PostgreSQL + 1,000 login
//!    roles").
//! 2. **mixed**: exactly N objects, instances included, spread over several instances of four engines. Of the N,
//!    60 % go to PostgreSQL, 20 % to Valkey, 10 % to NATS and 10 % to S3; each engine gets one instance per 500 of
//!    its objects (Valkey: per 250), at least one, and its objects are shared evenly between its instances.
//!    Inside a PostgreSQL instance, every 40 objects are 25 login roles, one database owned by the first of them
//!    and 14 grants of CONNECT on that database to the first 14 roles (databases are sparse: each CREATE DATABASE
//!    copies a template on disk). A Valkey instance holds ACL users, each with its own key pattern; a NATS
//!    instance holds JetStream streams (file storage, one subject tree each) and, one in four, KV buckets; an S3
//!    store holds buckets. At 1,000 objects: 2 PostgreSQL instances (299 objects each), 1 Valkey (199 users),
//!    1 NATS (99 streams and buckets), 1 S3 (99 buckets); at 10,000: 12 PostgreSQL, 8 Valkey, 2 NATS, 2 S3.

use std::time::Duration;

use crate::kip::{Harness, Project, Run};
use crate::report::{Measured, Ratio, Stats, Step, compare, header, note, row_with_rss, thousands};

/// How many times each step that changes nothing runs in one run (each a sample).
const READ_ONLY_REPEATS: usize = 5;

/// The two shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    PostgresRoles,
    Mixed,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::PostgresRoles => "postgres-roles",
            Shape::Mixed => "mixed",
        }
    }

    fn title(self, size: usize) -> String {
        let size = thousands(size);
        match self {
            Shape::PostgresRoles => format!("a fresh PostgreSQL 16 + {size} login roles"),
            Shape::Mixed => {
                format!("{size} objects over PostgreSQL, Valkey, NATS and S3 instances")
            }
        }
    }

    fn config(self, size: usize) -> String {
        match self {
            Shape::PostgresRoles => roles_config(size),
            Shape::Mixed => mixed_config(size),
        }
    }

    /// How many objects (graph nodes, instances included) the config of `size` declares.
    fn objects(self, size: usize) -> usize {
        match self {
            Shape::PostgresRoles => size + 1,
            Shape::Mixed => size,
        }
    }
}

/// Runs both shapes at every size; `runs` overrides the defaults (5 at 100 objects, 3 at 1,000, 1 at 10,000).
/// Returns the medians of each step at each size, postgres-roles then mixed, for the side-by-side with Terraform.
pub fn run(
    harness: &Harness,
    sizes: &[usize],
    runs: Option<usize>,
) -> (Vec<Measured>, Vec<Measured>) {
    println!(
        "\nscale: the real kip ({}) in temp projects under {}",
        harness.kip.display(),
        harness.root.display()
    );
    let roles = run_shape(harness, Shape::PostgresRoles, sizes, runs);
    let mixed = run_shape(harness, Shape::Mixed, sizes, runs);
    (roles, mixed)
}

fn default_runs(size: usize) -> usize {
    match size {
        0..=100 => 5,
        101..=1_000 => 3,
        _ => 1,
    }
}

fn run_shape(
    harness: &Harness,
    shape: Shape,
    sizes: &[usize],
    runs: Option<usize>,
) -> Vec<Measured> {
    // The first apply of each engine downloads and unpacks its toolchain into the shared cache (and PostgreSQL
    // builds its initdb template): done once here, untimed, with one instance of each engine the shape uses.
    {
        let warm = harness.project(&shape.config(match shape {
            Shape::PostgresRoles => 1,
            Shape::Mixed => 8,
        }));
        let first = warm.expect(0, &["apply", "--auto-approve"]);
        println!(
            "  ({}: first apply, filling the cache: {})",
            shape.name(),
            crate::report::ms(first.elapsed)
        );
    }
    let mut measured = Vec::new();
    for &size in sizes {
        let runs = runs.unwrap_or_else(|| default_runs(size)).max(1);
        let config = shape.config(size);
        let mut steps = Steps::default();
        for _ in 0..runs {
            let project = harness.project(&config);
            steps.measure(&project, shape, size);
        }
        header(&format!(
            "scale, {}: {} ({runs} runs, a new project each; the steps that change nothing {READ_ONLY_REPEATS} times per run)",
            shape.name(),
            shape.title(size)
        ));
        for (step, series) in steps.steps() {
            let stats = series.row(label(step));
            measured.push(Measured { size, step, stats });
        }
        steps
            .no_refresh
            .row("kip plan --refresh=false, after (trusts the state)");
        if shape == Shape::Mixed {
            note(&format!(
                "scale, mixed at {}: {}",
                thousands(size),
                census(&config)
            ));
        }
    }
    growth(shape, &measured);
    measured
}

fn label(step: Step) -> &'static str {
    match step {
        Step::Init => "(no init: toolchains resolve during apply)",
        Step::Validate => "kip lint",
        Step::PlanEmpty => "kip plan, no state",
        Step::Apply => "kip apply --auto-approve (every instance up, objects converged)",
        Step::NoopPlan => "kip plan --detailed-exitcode, after (reads every live object)",
        Step::Destroy => "kip destroy --auto-approve",
    }
}

/// The growth rows: 10,000 objects against 1,000, for the steps whose target is about growth.
fn growth(shape: Shape, measured: &[Measured]) {
    let median = |size: usize, step: Step| {
        measured
            .iter()
            .find(|measured| measured.size == size && measured.step == step)
            .map(|measured| measured.stats.median)
    };
    for step in [Step::PlanEmpty, Step::NoopPlan, Step::Validate] {
        if let (Some(large), Some(small)) = (median(10_000, step), median(1_000, step)) {
            compare(
                "Growth: 10,000 objects against 1,000",
                &format!("{}, {}", step.name(), shape.name()),
                large,
                ("1,000 objects", small),
                Ratio::Times,
                "≤ 10× (plan)",
            );
        }
    }
}

/// The times and the largest peak RSS of one step over the runs.
#[derive(Default)]
struct Series {
    times: Vec<Duration>,
    peak_rss_kib: Option<u64>,
}

impl Series {
    fn add(&mut self, run: &Run) {
        self.times.push(run.elapsed);
        self.peak_rss_kib = self.peak_rss_kib.max(run.peak_rss_kib);
    }

    /// A step that changes nothing, on a quiet machine: [`READ_ONLY_REPEATS`] timed runs of `kip ARGS` without
    /// `/usr/bin/time`, then one more under it, untimed, for the peak RSS. `check` judges every run.
    fn sample(&mut self, project: &Project<'_>, args: &[&str], check: impl Fn(&Run)) {
        crate::floor::quiet();
        for _ in 0..READ_ONLY_REPEATS {
            let run = project.run(args);
            check(&run);
            self.add(&run);
        }
        let run = project.run_with_rss(args);
        check(&run);
        self.peak_rss_kib = self.peak_rss_kib.max(run.peak_rss_kib);
    }

    fn row(&self, label: &str) -> Stats {
        row_with_rss(label, &self.times, self.peak_rss_kib)
    }
}

#[derive(Default)]
struct Steps {
    lint: Series,
    plan_empty: Series,
    apply: Series,
    noop_plan: Series,
    no_refresh: Series,
    destroy: Series,
}

impl Steps {
    /// The Terraform-shaped steps, in their order (no Init: kip has none).
    fn steps(&self) -> [(Step, &Series); 5] {
        [
            (Step::Validate, &self.lint),
            (Step::PlanEmpty, &self.plan_empty),
            (Step::Apply, &self.apply),
            (Step::NoopPlan, &self.noop_plan),
            (Step::Destroy, &self.destroy),
        ]
    }

    /// One run of the workflow in `project`, a new project holding the shape's config at `size`.
    fn measure(&mut self, project: &Project<'_>, shape: Shape, size: usize) {
        let objects = shape.objects(size);
        let succeeds = |run: &Run| assert_eq!(run.code, 0, "{}", run.describe());
        self.lint.sample(project, &["lint"], succeeds);
        self.plan_empty.sample(project, &["plan"], |plan| {
            succeeds(plan);
            assert!(
                plan.stdout.contains(&format!(
                    "Plan: {objects} to add, 0 to change, 0 to destroy."
                )),
                "{}",
                plan.describe()
            );
        });

        crate::floor::quiet();
        let apply = project.run_with_rss(&["apply", "--auto-approve"]);
        assert_eq!(apply.code, 0, "{}", apply.describe());
        assert!(
            apply.stdout.contains(&format!(
                "Apply complete! Resources: {objects} added, 0 changed, 0 destroyed."
            )),
            "{}",
            apply.describe()
        );
        self.apply.add(&apply);

        self.noop_plan
            .sample(project, &["plan", "--detailed-exitcode"], |noop| {
                assert!(
                    noop.code == 0,
                    "kip bug: the plan right after an apply of {} ({}) is not empty\n{}",
                    shape.name(),
                    thousands(size),
                    noop.describe()
                );
            });
        self.no_refresh.sample(
            project,
            &["plan", "--refresh=false", "--detailed-exitcode"],
            succeeds,
        );

        crate::floor::quiet();
        let destroy = project.run_with_rss(&["destroy", "--auto-approve"]);
        assert_eq!(destroy.code, 0, "{}", destroy.describe());
        self.destroy.add(&destroy);
    }
}

/// One PostgreSQL 16 instance with `roles` login roles.
fn roles_config(roles: usize) -> String {
    let mut config = String::from("postgres \"main\" {\n  version = \"16\"\n\n");
    for role in 0..roles {
        config.push_str(&format!("  role \"r{role:05}\" {{ login = true }}\n"));
    }
    config.push_str("}\n");
    config
}

/// How the mixed shape shares `objects` between the engines: (objects of each engine, instances included;
/// objects per instance).
const MIXED_ENGINES: [(Engine, usize, usize); 4] = [
    (Engine::Postgres, 60, 500),
    (Engine::Valkey, 20, 250),
    (Engine::Nats, 10, 500),
    (Engine::S3, 10, 500),
];

#[derive(Clone, Copy, Debug)]
enum Engine {
    Postgres,
    Valkey,
    Nats,
    S3,
}

/// The mixed shape: exactly `objects` objects (at least one instance of each engine, so at least 4).
fn mixed_config(objects: usize) -> String {
    let objects = objects.max(MIXED_ENGINES.len());
    let mut config = String::new();
    let mut given = 0;
    for (index, (engine, percent, per_instance)) in MIXED_ENGINES.into_iter().enumerate() {
        // The last engine takes the rounding remainder, so that the total is exact.
        let share = if index + 1 == MIXED_ENGINES.len() {
            objects - given
        } else {
            (objects * percent / 100).max(1)
        };
        given += share;
        let instances = share.div_ceil(per_instance).max(1);
        let inner = share - instances;
        for instance in 0..instances {
            let count = inner / instances + usize::from(instance < inner % instances);
            config.push_str(&instance_block(engine, instance, count));
        }
    }
    config
}

/// What a mixed config declares, counted by block kind: "12 postgres, 3750 role, …".
fn census(config: &str) -> String {
    let kinds = [
        "postgres", "role", "database", "grant", "valkey", "user", "nats", "stream", "kv", "s3",
        "bucket",
    ];
    kinds
        .iter()
        .map(|kind| format!("{} {kind}", declared(config, kind)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many blocks of `kind` a generated config opens (`role "r00001" {`, `grant {`), leaving out the attributes
/// of the same name (`role = "r00001"` inside a grant).
fn declared(config: &str, kind: &str) -> usize {
    config
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some(kind) && words.next().is_some_and(|word| word != "=")
        })
        .count()
}

/// One instance of `engine` holding `count` objects.
fn instance_block(engine: Engine, instance: usize, count: usize) -> String {
    let mut text = match engine {
        Engine::Postgres => format!("postgres \"pg{instance}\" {{\n  version = \"16\"\n\n"),
        Engine::Valkey => {
            format!("valkey \"vk{instance}\" {{\n  version   = \"9\"\n  maxmemory = \"64mb\"\n\n")
        }
        Engine::Nats => format!("nats \"nats{instance}\" {{\n  version = \"2\"\n\n"),
        Engine::S3 => format!("s3 \"s3{instance}\" {{\n  version = \"4\"\n\n"),
    };
    for slot in 0..count {
        text.push_str(&match engine {
            Engine::Postgres => postgres_object(slot),
            Engine::Valkey => format!(
                "  user \"u{slot:05}\" {{\n    commands = [\"+@read\", \"+@write\"]\n    keys     = [\"u{slot:05}:*\"]\n  }}\n"
            ),
            Engine::Nats if slot % 4 == 3 => format!("  kv \"kv{slot:05}\" {{}}\n"),
            Engine::Nats => {
                format!("  stream \"S{slot:05}\" {{\n    subjects = [\"s{slot:05}.>\"]\n  }}\n")
            }
            Engine::S3 => format!("  bucket \"bucket-{slot:05}\" {{}}\n"),
        });
    }
    text.push_str("}\n\n");
    text
}

/// The object at `slot` of a PostgreSQL instance: per 40 slots, 25 login roles, then a database owned by the
/// first of them, then 14 grants of CONNECT on it to the first 14 roles. Every object a slot names comes earlier.
fn postgres_object(slot: usize) -> String {
    let cycle = slot / 40;
    let first_role = cycle * 40;
    match slot % 40 {
        0..25 => format!("  role \"r{slot:05}\" {{ login = true }}\n"),
        25 => format!("  database \"d{cycle:04}\" {{ owner = \"r{first_role:05}\" }}\n"),
        at => format!(
            "  grant {{\n    role       = \"r{:05}\"\n    database   = \"d{cycle:04}\"\n    privileges = [\"CONNECT\"]\n  }}\n",
            first_role + at - 26
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mixed_shape_declares_exactly_the_objects_asked_for() {
        for objects in [8, 100, 1_000, 10_000] {
            let config = mixed_config(objects);
            let total: usize = [
                "postgres", "valkey", "nats", "s3", "role", "database", "grant", "user", "stream",
                "kv", "bucket",
            ]
            .iter()
            .map(|what| declared(&config, what))
            .sum();
            assert_eq!(total, objects, "{objects}");
        }
        let config = mixed_config(10_000);
        assert_eq!(declared(&config, "postgres"), 12);
        assert_eq!(declared(&config, "valkey"), 8);
        assert_eq!(declared(&config, "nats"), 2);
        assert_eq!(declared(&config, "s3"), 2);
        let config = mixed_config(1_000);
        assert_eq!(declared(&config, "postgres"), 2);
        assert_eq!(declared(&config, "database"), 14);
    }

    #[test]
    fn postgres_objects_name_only_what_came_before() {
        let config: String = (0..80).map(postgres_object).collect();
        assert_eq!(declared(&config, "role"), 50);
        assert_eq!(declared(&config, "database"), 2);
        assert!(config.contains("owner = \"r00040\""));
        assert!(config.contains("role       = \"r00053\"\n    database   = \"d0001\""));
    }

    #[test]
    fn the_roles_shape_has_one_instance() {
        let config = roles_config(3);
        assert_eq!(declared(&config, "role"), 3);
        assert_eq!(Shape::PostgresRoles.objects(3), 4);
    }
}
