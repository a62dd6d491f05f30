//! PostgreSQL's SysV shared-memory segment, released when an instance is destroyed.
//!
//! Besides its POSIX shared memory, a postmaster creates a small SysV segment as an interlock and names it (key and
//! id) on line 7 of `postmaster.pid`. A postmaster that stops removes it; one that is SIGKILLed leaves it, and the
//! next postmaster on the same data directory removes it at its start. When the instance is destroyed after such a
//! kill, no postmaster ever starts there again, and the segment would stay until the machine reboots (the kernel
//! allows 4,096). The same goes for initdb's standalone backends, killed with the kip that was building a template.
//! So a destroy (and the next template build) removes it: only the segment `postmaster.pid` names, only when no process is attached
//! to it, and only when it is the instance's account's.

use std::path::Path;
use std::process::{Command, Stdio};

/// One row of `/proc/sysvipc/shm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub key: i64,
    pub id: u64,
    pub attached: u64,
    pub uid: u32,
}

/// The segment's key and id as `postmaster.pid` records them (line 7), if it does.
pub fn recorded(postmaster_pid: &str) -> Option<(i64, u64)> {
    let line = postmaster_pid.lines().nth(6)?;
    let mut fields = line.split_whitespace();
    let key = fields.next()?.parse().ok()?;
    let id = fields.next()?.parse().ok()?;
    Some((key, id))
}

/// The rows of `/proc/sysvipc/shm` (`key shmid perms size cpid lpid nattch uid …`), skipping its header and any
/// line it cannot read.
pub fn segments(table: &str) -> Vec<Segment> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Segment {
                key: fields.first()?.parse().ok()?,
                id: fields.get(1)?.parse().ok()?,
                attached: fields.get(6)?.parse().ok()?,
                uid: fields.get(7)?.parse().ok()?,
            })
        })
        .collect()
}

/// The segment to remove for a data directory whose `postmaster.pid` reads `postmaster_pid`: the one it names, when
/// nothing is attached to it and `uid` owns it.
pub fn removable(postmaster_pid: &str, table: &str, uid: u32) -> Option<Segment> {
    let (key, id) = recorded(postmaster_pid)?;
    segments(table)
        .into_iter()
        .find(|segment| segment.id == id && segment.key == key)
        .filter(|segment| segment.attached == 0 && segment.uid == uid)
}

/// Removes the segment a killed standalone backend (initdb's) left, named by the `postmaster.pid` in `work` (a
/// template build's leftover directory), when that file's owner owns the segment.
pub fn release_left_in(work: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(metadata) = std::fs::metadata(work.join("postmaster.pid")) {
        release(work, metadata.uid());
    }
}

/// Removes the segment the data directory's `postmaster.pid` names, if [`removable`] allows it (with `ipcrm`, which
/// util-linux and BusyBox ship). Nothing to do when the postmaster stopped cleanly: it removed the file.
pub fn release(data_dir: &Path, uid: u32) {
    let Ok(postmaster_pid) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Ok(table) = std::fs::read_to_string("/proc/sysvipc/shm") else {
        return;
    };
    let Some(segment) = removable(&postmaster_pid, &table, uid) else {
        return;
    };
    match Command::new("ipcrm")
        .args(["-m", &segment.id.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(output) if output.status.success() => {
            tracing::debug!(
                id = segment.id,
                "removed the shared-memory segment of a killed postmaster"
            )
        }
        Ok(output) => tracing::warn!(
            id = segment.id,
            "cannot remove the shared-memory segment of a killed postmaster: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => tracing::warn!(
            id = segment.id,
            "cannot run ipcrm to remove the shared-memory segment of a killed postmaster: {error}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID_FILE: &str = "4242\n/p/.kip/run/postgres.main/data\n1764460000\n5432\n/p/.kip/run/postgres.main/run\n\n  \
                            9805001    360456\nready   \n";

    const TABLE: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid
   9805001     360456   600                    56  4242  4250      0   995   994   995   994
   9805001     360457   600                    56  4300  4301      0   995   994   995   994
   5432001     131078   600                    56  1111  1112      2   995   994   995   994
";

    #[test]
    fn only_the_recorded_unattached_segment_of_the_account_is_removable() {
        assert_eq!(recorded(PID_FILE), Some((9805001, 360456)));
        assert_eq!(
            removable(PID_FILE, TABLE, 995),
            Some(Segment {
                key: 9805001,
                id: 360456,
                attached: 0,
                uid: 995
            })
        );
        // Another account's segment stays, and so does one something is attached to.
        assert_eq!(removable(PID_FILE, TABLE, 996), None);
        let attached = TABLE.replace("56  4242  4250      0", "56  4242  4250      1");
        assert_eq!(removable(PID_FILE, &attached, 995), None);
        // The id alone is not enough: a reused id with another key is not the one the file names.
        let reused = TABLE.replace("   9805001     360456", "   7777777     360456");
        assert_eq!(removable(PID_FILE, &reused, 995), None);
        // A pid file without line 7 (a postmaster still starting) names nothing.
        assert_eq!(recorded("4242\n/p\n"), None);
        assert_eq!(segments("header only\n"), Vec::new());
    }
}
