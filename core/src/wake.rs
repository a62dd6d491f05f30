//! Waking on a sign of life in the file system, for a wait that would otherwise poll: the supervisor's readiness
//! probes between their intervals. An inotify instance watches the files and directories given; the waiter goes on
//! at the next event, and keeps its own timer as the fallback (events are hints, never the only way on).
//!
//! Closing an inotify instance that watched anything waits for the kernel's grace period for its watches
//! (`synchronize_srcu`; 8–24 ms measured on this machine kind, on the path of every start until it was moved), so a
//! [`Wake`] is closed on a blocking thread when dropped inside a tokio runtime. That suits the supervisor, which
//! lives on. A `kip` command's runtime waits for its blocking threads when it shuts down, so a command would still
//! wait for the close: the commands poll (tried for PostgreSQL's first session and reverted, see BENCHMARKS.md).

use std::path::Path;

use futures_util::StreamExt as _;
use inotify::{EventStream, Inotify, WatchMask};

/// An inotify instance, and the stream of its events on the current tokio runtime.
pub struct Wake {
    events: Option<EventStream<[u8; 1024]>>,
}

impl Wake {
    /// Wakes on a write to any of `written`, and on a file created in or moved into any of `created_in`. `None`
    /// when nothing could be watched (no inotify instances left, a path that is missing or unreadable): the caller
    /// polls. Outside a tokio runtime, there is nothing to wake: `None` too.
    pub fn new(written: &[&Path], created_in: &[&Path]) -> Option<Wake> {
        tokio::runtime::Handle::try_current().ok()?;
        let inotify = Inotify::init().ok()?;
        let mut watched = false;
        for path in written {
            watched |= inotify.watches().add(path, WatchMask::MODIFY).is_ok();
        }
        for dir in created_in {
            let created = WatchMask::CREATE | WatchMask::MOVED_TO;
            watched |= inotify.watches().add(dir, created).is_ok();
        }
        if !watched {
            return None;
        }
        let events = inotify.into_event_stream([0; 1024]).ok()?;
        Some(Wake {
            events: Some(events),
        })
    }

    /// Returns at the next event (any of them is worth a look). Once inotify fails, never: the caller's timer
    /// decides.
    pub async fn next(&mut self) {
        let Some(events) = &mut self.events else {
            return std::future::pending().await;
        };
        match events.next().await {
            Some(Ok(_)) => {}
            _ => std::future::pending().await,
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        let Some(events) = self.events.take() else {
            return;
        };
        let inotify = events.into_inotify();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || drop(inotify));
            }
            Err(_) => drop(inotify),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_on_a_write_and_on_a_file_created_and_not_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "").unwrap();
        let sockets = dir.path().join("run");
        std::fs::create_dir(&sockets).unwrap();
        let mut wake = Wake::new(&[&log], &[&sockets]).unwrap();

        let quiet = tokio::time::timeout(Duration::from_millis(50), wake.next()).await;
        assert!(quiet.is_err(), "nothing happened, nothing wakes");

        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut file| std::io::Write::write_all(&mut file, b"listening\n"))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.next())
            .await
            .expect("a write to the log wakes");

        std::fs::write(sockets.join("server.sock"), "").unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.next())
            .await
            .expect("a file created in the directory wakes");
    }

    #[test]
    fn nothing_to_watch_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(Wake::new(&[&missing], &[&missing]).is_none());
        assert!(Wake::new(&[], &[]).is_none());
    }
}
