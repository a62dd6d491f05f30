//! Spare data directories and spare accounts, prepared once a command is done and out of its way (see
//! `kip_providers::template` and `kip_core::runas::SpareAccounts`): the hidden `kip prepare-spare` and
//! `kip prepare-account`, and [`launch_wanted`], which starts them detached for each spare a command asked for.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kip_providers::template::{
    SpareFinish, SpareRequest, prepare_spare_in_background, take_wanted_spares,
};

use crate::ExitStatus;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The template whose spare to prepare.
    pub template: PathBuf,
    /// A top-level file of the template that is not copied (a running server's).
    #[arg(long = "skip")]
    pub skip: Vec<String>,
    /// The account the spare is given to, `UID:GID`.
    #[arg(long = "owner", value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
    /// The variant of spare to prepare, finished by the engine's own step (PostgreSQL: `database`).
    #[arg(long = "finish", requires = "toolchain")]
    pub finish: Option<String>,
    /// The engine build the variant's step runs with.
    #[arg(long = "toolchain")]
    pub toolchain: Option<PathBuf>,
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once(':')
        .and_then(|(uid, gid)| Some((uid.parse().ok()?, gid.parse().ok()?)));
    parsed.ok_or_else(|| format!("`{text}` is not UID:GID"))
}

#[derive(Debug, clap::Args)]
pub struct AccountArgs {
    /// Where the spare accounts are kept (`accounts` in the cache).
    pub dir: PathBuf,
}

pub fn prepare_account(args: AccountArgs) -> anyhow::Result<ExitStatus> {
    kip_core::runas::SpareAccounts::at(&args.dir).prepare()?;
    Ok(ExitStatus::Success)
}

pub fn run(args: Args) -> anyhow::Result<ExitStatus> {
    let request = SpareRequest {
        template: args.template,
        not_copied: args.skip,
        owner: args.owner,
        finish: args
            .finish
            .zip(args.toolchain)
            .map(|(variant, toolchain)| SpareFinish { variant, toolchain }),
    };
    prepare_spare_in_background(&request)?;
    Ok(ExitStatus::Success)
}

/// Starts a detached, low-priority `kip prepare-spare` for every spare this command's provisionings asked for, and
/// returns at once: the command's own exit never waits for a copy. The preparers run in their own process group
/// (a ^C at the terminal is not theirs) with no terminal output; one killed halfway leaves a temp copy the next
/// one removes.
/// `KIP_SPARES=0` turns spares off (the test suite does, for all but the spares' own test: each test has its own
/// cache, where a spare would only be written, never used).
/// `KIP_SPARE_ACCOUNTS=0` turns spare accounts off (the test suite does, for all but their own test: an account
/// made in a test's cache would outlive it).
pub fn launch_wanted() {
    let requests = take_wanted_spares();
    let accounts = kip_core::runas::take_wanted_spare_accounts();
    let off = |name: &str| std::env::var_os(name).is_some_and(|value| value == "0");
    let Ok(kip) = std::env::current_exe() else {
        return;
    };
    if !kip_core::runas::spare_accounts_off() {
        for spares in accounts {
            let mut command = Command::new(&kip);
            command.arg("prepare-account").arg(spares.dir());
            detached(command);
        }
    }
    if off("KIP_SPARES") {
        return;
    }
    for request in requests {
        let mut command = Command::new(&kip);
        command.arg("prepare-spare").arg(&request.template);
        for skipped in &request.not_copied {
            command.arg("--skip").arg(skipped);
        }
        if let Some((uid, gid)) = request.owner {
            command.arg("--owner").arg(format!("{uid}:{gid}"));
        }
        if let Some(finish) = &request.finish {
            command
                .arg("--finish")
                .arg(&finish.variant)
                .arg("--toolchain")
                .arg(&finish.toolchain);
        }
        detached(command);
    }
}

/// Starts `command` with no terminal output, in its own process group (a ^C at the terminal is not its), and
/// does not wait for it.
fn detached(mut command: Command) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Err(error) = command.spawn() {
        tracing::debug!(%error, "cannot start a spare's preparation");
    }
}
