//! What the supervisor reads from `/proc`: a process's start time (which, with its pid, names one process for the
//! machine's uptime: a pid alone can be reused once its process is gone), its process group, whether a group still
//! has live members, and which processes hold a listening socket.
//!
//! A supervisor that adopts the processes of a supervisor that was killed knows them only by the pid and start time
//! it persisted; everything it decides about them (adopt, monitor, leave alone) rests on these reads. The listening
//! socket checks let a readiness probe tell its own process's server from a foreign one on the same path or port.
//!
//! Every function here answers from a snapshot that may be stale a moment later; callers only draw conclusions that
//! stay true (a process that is gone stays gone; a pid that is a live process group's id cannot be reused).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// The processes whose working directory is `dir` or under it (from `/proc/<pid>/cwd`): what still works in a
/// directory, such as an engine's initialisation tools and the backends they run, which all work in the data
/// directory they build. A process whose `cwd` cannot be read (another account's, when this one is not root) is
/// not seen.
pub fn working_in(dir: &Path) -> Vec<u32> {
    pids()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Whether a process runs as `uid` (the owner of its `/proc` entry: its effective uid); a zombie, which only waits to
/// be reaped, does not run.
pub fn running_as(uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    pids().any(|pid| {
        std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|metadata| metadata.uid() == uid)
            && stat(pid).is_some_and(|stat| !stat.is_dead())
    })
}

/// Every process's pid, as `/proc` lists them now (none without `/proc`).
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead)…
    pub state: char,
    pub parent: u32,
    pub process_group: u32,
    /// When the process started, in clock ticks since boot (field 22).
    pub start_time: u64,
    /// The kernel's flags for the process (field 9, `PF_*`).
    pub flags: u32,
}

impl Stat {
    /// Whether the process has exited (a zombie waits only to be reaped).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Whether the process is on its way out (`PF_EXITING`, set as its exit begins) and not yet a zombie, and is not
    /// a kernel thread (`PF_KTHREAD`).
    pub fn is_exiting(&self) -> bool {
        const PF_EXITING: u32 = 0x4;
        const PF_KTHREAD: u32 = 0x0020_0000;
        self.flags & PF_EXITING != 0 && self.flags & PF_KTHREAD == 0 && !self.is_dead()
    }
}

/// The stat of `pid`, if it exists.
pub(super) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `pid (comm) state ppid pgrp … starttime …`. The command name may hold spaces and parentheses, so the
/// fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Field 3 (state) is fields[0]; field 4 (ppid) is fields[1]; field 5 (pgrp) is fields[2]; field 9 (flags) is
    // fields[6]; field 22 (starttime) is fields[19].
    Some(Stat {
        state: fields.first()?.chars().next()?,
        parent: fields.get(1)?.parse().ok()?,
        process_group: fields.get(2)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// What became of a process the supervisor knows by pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Identity {
    /// It runs: the pid exists with the same start time and is not a zombie.
    Alive,
    /// It exited: no process has the pid, or only its zombie does.
    Gone,
    /// Another process has the pid now: the kernel reused it.
    Reused,
}

/// Whether the process started at `start_time` as `pid` still runs.
pub(super) fn identify(pid: u32, start_time: u64) -> Identity {
    match stat(pid) {
        None => Identity::Gone,
        Some(stat) if stat.start_time != start_time => Identity::Reused,
        Some(stat) if stat.is_dead() => Identity::Gone,
        Some(_) => Identity::Alive,
    }
}

/// The live (not zombie) processes whose process group is `group`, with their stats.
pub(super) fn group_members(group: u32) -> Vec<(u32, Stat)> {
    pids()
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, stat)| stat.process_group == group && !stat.is_dead())
        .collect()
}

/// Whether a live process is in the group. Zombies do not count: they hold no port, socket or file, and the
/// members other than the leader are not the daemon's to reap. Whoever inherited them does that: init, which in a
/// container may be slow to, or never do it (a container's PID 1 is often not an init at all).
pub(super) fn group_has_live_member(group: u32) -> bool {
    if !Path::new("/proc/self/stat").exists() {
        // Without /proc, only a signal test can tell, and it counts zombies: say the group is there.
        return true;
    }
    !group_members(group).is_empty()
}

/// The live process-group leaders a run left behind when its pid was never recorded (the daemon was killed between
/// spawning it and writing its table): the run's id in their environment, or, for programs that overwrite their
/// environment's memory with their process title (PostgreSQL does), the same executable in the same working
/// directory with no run id of another. `exclude` are pids other records own.
pub(super) fn orphaned_leaders(
    run_name: &str,
    run: &str,
    program: &Path,
    cwd: &Path,
    exclude: &[u32],
) -> Vec<(u32, Stat)> {
    let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    pids()
        .filter(|pid| !exclude.contains(pid))
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(pid, stat)| stat.process_group == *pid && !stat.is_dead())
        .filter(|(pid, _)| {
            if environment_has(*pid, run_name, run) {
                return true;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let carries_another_run = environ
                .split(|byte| *byte == 0)
                .any(|entry| entry.starts_with(format!("{run_name}=").as_bytes()));
            !carries_another_run
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == program)
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|dir| dir == cwd)
        })
        .collect()
}

/// The workers a previous run of the process `name` (`program` in `cwd`) left behind: live processes of `uid` running
/// `program` (or a deleted file of its path, or, while they exit, nothing any more) in `cwd` whose parent is neither
/// this supervisor nor itself `program` (so neither a leader it runs nor a worker of a live leader), and whose
/// environment names this process, or no process at all (PostgreSQL writes its process titles over its
/// environment): a process of another name (a leader adopted from a supervisor that was killed) is not one. Engines
/// whose workers leave their leader's process group (PostgreSQL's backends call `setsid`) outlive a leader killed
/// from outside by a moment, still holding what a new run needs (shared memory, the data directory's lock); the
/// spawn waits for them (see `wait_for_leftovers` in `process`).
pub(super) fn leftover_workers(name: &str, program: &Path, cwd: &Path, uid: u32) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
    let cwd = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
    let own = std::process::id();
    let runs_program = |pid: u32| executable(pid).is_some_and(|exe| exe == program);
    pids()
        .filter(|pid| *pid != own)
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|meta| meta.uid() == uid))
        // A worker on its way out has let go of its memory, and with it of its executable's link, a moment before
        // it let go of everything else; its directory still says whose it is.
        .filter(|pid| runs_program(*pid) || is_exiting(*pid))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|dir| dir == cwd))
        .filter(|pid| {
            stat(*pid).is_some_and(|stat| {
                !stat.is_dead() && stat.parent != own && !runs_program(stat.parent)
            })
        })
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let of_a_run = environ
                .split(|byte| *byte == 0)
                .any(|entry| entry.starts_with(format!("{}=", super::table::RUN_ENV).as_bytes()));
            !of_a_run || environment_has(*pid, super::table::NAME_ENV, name)
        })
        .collect()
}

/// The executable `pid` runs, as it was when it started: one that was deleted or replaced since (a toolchain
/// unpacked again under a running server) still names its path, without the kernel's ` (deleted)`.
fn executable(pid: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(
        match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(path) => PathBuf::from(OsStr::from_bytes(path)),
            None => exe,
        },
    )
}

/// Whether `pid` is past the release of its memory but not yet a zombie: exiting, with its executable's link gone
/// (`ENOENT`, which it is once the process let go of its memory).
fn is_exiting(pid: u32) -> bool {
    stat(pid).is_some_and(|stat| stat.is_exiting())
        && matches!(
            std::fs::read_link(format!("/proc/{pid}/exe")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound
        )
}

/// Whether the environment `pid` started with holds `NAME=VALUE` (`/proc/PID/environ`; false when unreadable).
pub(super) fn environment_has(pid: u32, name: &str, value: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{name}={value}");
    environ
        .split(|&byte| byte == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// The inodes of the listening unix stream sockets bound to `path` (from `/proc/net/unix`); `None` when that file
/// cannot be read.
pub(super) fn unix_listening_inodes(path: &Path) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    let path = path.to_str()?;
    Some(parse_unix_listeners(&text, path))
}

/// `Num RefCount Protocol Flags Type St Inode Path`: a listening socket has the `__SO_ACCEPTCON` flag (0x10000).
fn parse_unix_listeners(text: &str, path: &str) -> Vec<u64> {
    const ACCEPTING: u32 = 0x10000;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // The inode column is padded with spaces and the path may hold spaces: take seven fields, then the
            // rest of the line (after one space) is the path.
            let mut rest = line;
            let mut fields = [""; 7];
            for field in &mut fields {
                rest = rest.trim_start();
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                *field = &rest[..end];
                rest = &rest[end..];
            }
            let bound_to = rest.strip_prefix(' ')?;
            let flags = u32::from_str_radix(fields[3], 16).ok()?;
            let inode = fields[6].parse().ok()?;
            (flags & ACCEPTING != 0 && bound_to == path).then_some(inode)
        })
        .collect()
}

/// The inodes of the TCP sockets listening on `port`, on any local address, over IPv4 and IPv6 (from
/// `/proc/net/tcp` and `/proc/net/tcp6`); `None` when neither can be read.
pub(super) fn tcp_listening_inodes(port: u16) -> Option<Vec<u64>> {
    let mut inodes = Vec::new();
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            read_any = true;
            inodes.extend(parse_tcp_listeners(&text, port));
        }
    }
    read_any.then_some(inodes)
}

/// `sl local_address rem_address st … uid timeout inode`: a listening socket has state 0A.
fn parse_tcp_listeners(text: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit(':').next()?;
            let local_port = u16::from_str_radix(local_port, 16).ok()?;
            (local_port == port && *fields.get(3)? == LISTEN)
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether a live member of `group` has one of the sockets `inodes` open.
pub(super) fn group_holds_socket(group: u32, inodes: &[u64]) -> bool {
    let wanted: Vec<String> = inodes
        .iter()
        .map(|inode| format!("socket:[{inode}]"))
        .collect();
    group_members(group).into_iter().any(|(pid, _)| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|wanted| target.as_os_str() == &**wanted))
        })
    })
}

/// Whether a process of the group `group` holds a TCP socket listening on `port`, asked of the sockets themselves:
/// each socket descriptor of each member is duplicated into this process (`pidfd_getfd`, allowed for the
/// supervisor's own children and for root) and asked whether it accepts connections and on which port. A read of
/// `/proc/net/tcp` walks the kernel's whole connection table, several milliseconds on a machine with much memory;
/// this is a few system calls per descriptor. `None` when the kernel or the permissions do not allow it (the
/// caller falls back to `/proc/net`).
pub(super) fn group_listens_on(group: u32, port: u16) -> Option<bool> {
    // The leader first: most servers listen in the process that was spawned, and finding the other members means
    // reading every process's stat (~150 files on a quiet machine), on the path of every start.
    let leader_is_member =
        stat(group).is_some_and(|stat| stat.process_group == group && !stat.is_dead());
    if leader_is_member && listens_on(group, port)? {
        return Some(true);
    }
    let members = group_members(group);
    if members.is_empty() {
        // No /proc, or the group is gone: the caller's fallback decides.
        return None;
    }
    for (pid, _) in members {
        if pid != group && listens_on(pid, port)? {
            return Some(true);
        }
    }
    Some(false)
}

/// Whether the process `pid` holds a socket listening on `port` (false when it exited meanwhile); `None` when this
/// kernel or account cannot ask.
fn listens_on(pid: u32, port: u16) -> Option<bool> {
    use rustix::io::Errno;
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let pidfd = match pidfd_open(Pid::from_raw(pid as i32)?, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        // Exited meanwhile: the other members may still hold the socket.
        Err(Errno::SRCH) => return Some(false),
        Err(_) => return None,
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Some(false);
    };
    for fd in fds.flatten() {
        let is_socket = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:["));
        let Some(number) = fd
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let socket = match pidfd_getfd(&pidfd, number, PidfdGetfdFlags::empty()) {
            Ok(socket) => socket,
            // Closed, or the process exited, meanwhile.
            Err(Errno::BADF | Errno::SRCH) => continue,
            // This kernel or account cannot ask: the caller falls back to /proc/net.
            Err(_) => return None,
        };
        let listening = rustix::net::sockopt::socket_acceptconn(&socket).unwrap_or(false);
        let bound = rustix::net::getsockname(&socket).ok().and_then(|address| {
            rustix::net::SocketAddrV4::try_from(address.clone())
                .map(|v4| v4.port())
                .or_else(|_| rustix::net::SocketAddrV6::try_from(address).map(|v6| v6.port()))
                .ok()
        });
        if listening && bound == Some(port) {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process of the uid runs as it; once killed and not yet reaped (a zombie), it no longer does.
    #[test]
    fn running_as_sees_a_live_process_of_the_uid_and_not_its_zombie() {
        use std::os::unix::process::CommandExt as _;
        assert!(running_as(rustix::process::geteuid().as_raw()));
        // A uid no account has, where the test may switch to it (as root).
        const UNUSED: u32 = 3_999_999_937;
        assert!(!running_as(UNUSED));
        if !rustix::process::geteuid().is_root() {
            return;
        }
        /// Killed and reaped however the test ends.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Reaped(
            std::process::Command::new("sleep")
                .arg("30")
                .uid(UNUSED)
                .gid(UNUSED)
                .spawn()
                .unwrap(),
        );
        assert!(running_as(UNUSED));
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child.0),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        // Not reaped yet: a zombie until `wait`.
        while !stat(child.0.id()).is_some_and(|stat| stat.is_dead()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!running_as(UNUSED));
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4711 (my (odd) name) S 1 4711 4711 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                parent: 1,
                process_group: 4711,
                flags: 4194560,
                start_time: 987654,
            })
        );
        assert!(!parse_stat(line).unwrap().is_exiting());
        let exiting = line.replace(" 4194560 ", " 4194564 ");
        assert!(parse_stat(&exiting).unwrap().is_exiting());
        let kernel_thread = line.replace(" 4194560 ", " 2129988 ");
        assert!(!parse_stat(&kernel_thread).unwrap().is_exiting());
        assert_eq!(parse_stat("4711 (truncated"), None);
        let own = stat(std::process::id()).unwrap();
        assert!(!own.is_dead());
        assert_eq!(
            identify(std::process::id(), own.start_time),
            Identity::Alive
        );
        assert_eq!(
            identify(std::process::id(), own.start_time + 1),
            Identity::Reused
        );
        // The environment the process started with (tests do not change PATH).
        let path = std::env::var("PATH").unwrap();
        assert!(environment_has(std::process::id(), "PATH", &path));
        assert!(!environment_has(std::process::id(), "PATH", "/nowhere"));
    }

    #[test]
    fn listening_sockets_are_found_by_path_and_by_port() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01   337 /p/.kip/run/a b.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 31338 /p/.kip/run/a b.sock\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 31339 /p/other.sock\n\
                    0000000000000000: 00000002 00000000 00000000 0002 01 31340\n";
        assert_eq!(parse_unix_listeners(unix, "/p/.kip/run/a b.sock"), [337]);
        assert_eq!(
            parse_unix_listeners(unix, "/p/missing.sock"),
            Vec::<u64>::new()
        );

        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
                   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0\n\
                   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0\n";
        assert_eq!(parse_tcp_listeners(tcp, 8080), [4242]);
        assert_eq!(parse_tcp_listeners(tcp, 80), [4244]);
        assert_eq!(parse_tcp_listeners(tcp, 81), Vec::<u64>::new());
    }
}
