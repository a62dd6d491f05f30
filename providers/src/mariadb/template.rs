//! The templater: `mariadb-install-db` once per MariaDB version (and what it fixes) into a shared template, then a
//! copy of it for every new instance ([`crate::template`] builds, locks, names and copies; this module says what is
//! MariaDB's).
//!
//! `mariadb-install-db` costs ~3 s here; copying its result ~0.05 s. What is fixed at install time is the version
//! and the redo log size the template is made with ([`REDO_LOG_SIZE`], small so that the copy is cheap; the
//! instance's configuration keeps it unless `settings` says otherwise, and InnoDB resizes the log at start then).
//!
//! A template is closed before it is complete: `mariadb-install-db` leaves `root` on every loopback host and on the
//! machine's name with no password at all, so, offline (`mariadbd --bootstrap`, which listens on nothing), kip
//! removes every account but `root@localhost` and the locked `mariadb.sys@localhost`, removes their proxy rights,
//! and gives `root@localhost` a random bootstrap password as a `mysql_native_password` hash (and no `unix_socket`
//! alternative). That password is in the template's `kip-bootstrap` file, never copied into an instance; an
//! instance's first start asks for it, and `after_start` replaces it with the instance's own at once.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kip_core::engine::RunAs;

use super::MyError;
use crate::template::{self as shared, BOOTSTRAP_FILE, DataDir};

/// The redo log size templates are made with, and instances keep unless `settings` sets `innodb_log_file_size`.
pub const REDO_LOG_SIZE: &str = "8M";

/// A file every whole MariaDB data directory has (InnoDB's system tablespace).
pub const MARKER: &str = "ibdata1";

/// Files of a template never copied: a running server's.
const NOT_COPIED: [&str; 2] = ["mariadb.pid", "aria_log_control.lock"];

/// The template's directory name.
pub fn template_name(version: &str) -> String {
    shared::template_name("mariadb", version, None)
}

fn is_complete(template: &Path) -> bool {
    template.join(MARKER).is_file()
        && template.join("mysql").is_dir()
        && template.join(BOOTSTRAP_FILE).is_file()
}

/// Returns the template for this version, running `mariadb-install-db` (as `run_as`) when there is none yet.
pub fn ensure_template(
    toolchain_root: &Path,
    version: &str,
    templates_dir: &Path,
    run_as: Option<&RunAs>,
) -> Result<PathBuf, MyError> {
    shared::ensure(
        templates_dir,
        &template_name(version),
        is_complete,
        // mariadbd's bootstrap keeps nothing outside its directory.
        |_| {},
        |work| build(toolchain_root, version, work, run_as),
    )
}

/// The bootstrap password of `template`.
pub fn bootstrap_password(template: &Path) -> Result<String, MyError> {
    Ok(shared::bootstrap_password(template)?)
}

/// Creates `data_dir` as a copy of `template`, owned by `run_as`, mode 0700.
pub fn provision(template: &Path, data_dir: &Path, run_as: Option<&RunAs>) -> Result<(), MyError> {
    let kind = DataDir {
        engine: "MariaDB",
        marker: MARKER,
        not_copied: &NOT_COPIED,
    };
    shared::provision(template, data_dir, kind, run_as, None)?;
    Ok(())
}

fn build(
    toolchain_root: &Path,
    version: &str,
    work: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), MyError> {
    let install = toolchain_root.join("bin").join("mariadb-install-db");
    shared::open_to_engine(work, &install, run_as)?;
    let mut command = Command::new(&install);
    command
        .arg("--no-defaults")
        .arg(format!("--basedir={}", toolchain_root.display()))
        .arg(format!("--datadir={}", work.display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--skip-log-bin",
            &format!("--innodb-log-file-size={REDO_LOG_SIZE}"),
        ]);
    run_tool(&mut command, toolchain_root, work, run_as, None).map_err(|output| {
        MyError::InstallDb {
            version: version.to_owned(),
            data_dir: work.to_owned(),
            output,
        }
    })?;
    let password = shared::new_password(work)?;
    close(toolchain_root, work, &password, run_as)?;
    Ok(shared::seal(work, &password, run_as)?)
}

/// The statement that gives `root@localhost` the password whose `mysql_native_password` hash is `root_hash`, and
/// nothing else to log in with (no `unix_socket` alternative, not locked). `root_hash` is `*` and hex digits.
fn root_statement(root_hash: &str) -> String {
    format!(
        "UPDATE mysql.global_priv SET Priv = JSON_COMPACT(JSON_SET(JSON_REMOVE(Priv, '$.auth_or'), \
         '$.plugin', 'mysql_native_password', '$.authentication_string', '{root_hash}', \
         '$.account_locked', false, '$.password_last_changed', UNIX_TIMESTAMP())) \
         WHERE Host = 'localhost' AND User = 'root';\n"
    )
}

/// The statements that close a freshly installed data directory (see the module's doc).
fn closing_statements(root_hash: &str) -> String {
    format!(
        "DELETE FROM mysql.global_priv WHERE NOT (Host = 'localhost' AND User IN ('root', 'mariadb.sys'));\n\
         DELETE FROM mysql.proxies_priv WHERE NOT (Host = 'localhost' AND User = 'root');\n\
         DELETE FROM mysql.roles_mapping;\n{}",
        root_statement(root_hash)
    )
}

/// Closes a freshly installed `work` (see the module's doc), with `password` as root's bootstrap password.
fn close(
    toolchain_root: &Path,
    work: &Path,
    password: &str,
    run_as: Option<&RunAs>,
) -> Result<(), MyError> {
    let statements = closing_statements(&super::password::native_hash(password));
    bootstrap(toolchain_root, work, &statements, run_as)
}

/// Gives root of the data directory `data_dir`, whose server does not run, the password whose hash is `root_hash`
/// (for a data directory kip's state does not account for). A server running on it makes this fail with
/// [`MyError::NoCredentials`]: kip never opens access to get in.
pub fn set_root_offline(
    toolchain_root: &Path,
    data_dir: &Path,
    root_hash: &str,
    run_as: Option<&RunAs>,
) -> Result<(), MyError> {
    if !root_hash.starts_with('*') || !root_hash[1..].chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(MyError::InvalidName {
            kind: "password hash",
            name: String::new(),
            reason: "not a mysql_native_password hash",
        });
    }
    bootstrap(toolchain_root, data_dir, &root_statement(root_hash), run_as).map_err(|error| {
        match error {
            // mariadbd's own words when another server holds the data directory's files.
            MyError::Close { output, .. } if output.contains("Unable to lock") => {
                MyError::NoCredentials {
                    data_dir: data_dir.to_owned(),
                }
            }
            other => other,
        }
    })
}

/// Runs `mariadbd --bootstrap` on `work` (no network, no socket) with `statements` on its stdin.
fn bootstrap(
    toolchain_root: &Path,
    work: &Path,
    statements: &str,
    run_as: Option<&RunAs>,
) -> Result<(), MyError> {
    let mariadbd = toolchain_root.join("bin").join("mariadbd");
    let mut command = Command::new(&mariadbd);
    command
        .arg("--no-defaults")
        .arg("--bootstrap")
        .arg(format!("--basedir={}", toolchain_root.display()))
        .arg(format!("--datadir={}", work.display()))
        .arg(format!(
            "--lc-messages-dir={}",
            toolchain_root.join("share/mysql").display()
        ))
        .args([
            "--skip-networking",
            "--skip-log-bin",
            &format!("--innodb-log-file-size={REDO_LOG_SIZE}"),
        ]);
    run_tool(&mut command, toolchain_root, work, run_as, Some(statements)).map_err(|output| {
        MyError::Close {
            data_dir: work.to_owned(),
            output,
        }
    })
}

/// Runs one of MariaDB's tools with nothing of kip's environment, as `run_as` (or `--user=root` when kip is root
/// and has no account to run it as: mariadbd refuses root otherwise), feeding it `input`. Its output's tail when it
/// fails.
fn run_tool(
    command: &mut Command,
    toolchain_root: &Path,
    work: &Path,
    run_as: Option<&RunAs>,
    input: Option<&str>,
) -> Result<(), String> {
    use std::io::Write as _;
    if run_as.is_none() && rustix::process::geteuid().is_root() {
        command.arg("--user=root");
    }
    command
        .current_dir(toolchain_root)
        .env_clear()
        .envs(crate::shared::engine_environment())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(run_as) = run_as {
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let started = std::time::Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run {:?}: {error}", command.get_program()))?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // A failed write shows in the output below (the tool exited first).
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("cannot wait for {:?}: {error}", command.get_program()))?;
    tracing::debug!(program = ?command.get_program(), data_dir = %work.display(), elapsed = ?started.elapsed(), "MariaDB tool ran");
    let text = shared::output_tail(&output, 30);
    if output.status.success() && !text.contains("[ERROR]") && !text.contains("ERROR:") {
        Ok(())
    } else {
        Err(format!("{} ({})", text, output.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_keeps_only_root_with_the_hash() {
        let text = closing_statements("*ABC");
        assert!(text.contains("'$.authentication_string', '*ABC'"));
        assert!(text.contains("JSON_REMOVE(Priv, '$.auth_or')"));
        assert_eq!(template_name("10.11.19"), "mariadb-10.11.19");
    }
}
