//! Transparent huge pages for kip's own memory: held back for small work, allowed for large work, and never passed
//! on to the engines.
//!
//! kip's allocator (mimalloc) marks its arena for transparent huge pages (`MADV_HUGEPAGE`), so every thread's heap
//! faults in at least one 2 MiB page, which the kernel clears first (and, with THP defrag on `madvise`, may compact
//! memory for). An apply runs several threads (the read-ahead, the walks, the supervisor's warm-up) beside the
//! engine it starts, and on the project's 2-core machines those clears were a fifth of all CPU time during an
//! instance's start (BENCHMARKS.md). A plan of a thousand objects, on the other hand, builds tens of megabytes on
//! one thread and is faster with huge pages (fewer faults). So kip starts with them held back (`hold_back`, first
//! thing in `main`, before the allocator maps its first arena) and allows them again once the configuration turns
//! out to be large (`allow_for_source`, `allow_for`: the configuration check calls them).
//!
//! The flag (`PR_SET_THP_DISABLE`) is the process's and is inherited across `fork` and `execve`: the supervisor is
//! handed the setting kip itself was started with (`handed_on`) and takes it back first thing
//! (`restore_handed_on`), and `kip run` / `kip connect` put it back before they start the user's program
//! (`restore`), so the engines and the user's programs see the machine's own policy, not kip's choice.

use std::sync::OnceLock;

/// From how many declared nodes (instances and objects) on the memory kip builds pays for huge pages: measured on
/// the project's machines, plans of 100 objects took the same time either way, of 300 1.5–3 ms less with them, and
/// of 1,000 5–7 ms less.
pub const LARGE: usize = 200;

/// The size of configuration source from which the work is taken to be large before it is parsed: about
/// [`LARGE`] one-line objects (`role "r0001" { login = true }`).
pub const LARGE_SOURCE: usize = 8 * 1024;

/// Whether huge pages were disabled when the process started, recorded by [`hold_back`]; unset when it did not run
/// (or the kernel has no such flag): then nothing here changes anything.
static STARTED_DISABLED: OnceLock<bool> = OnceLock::new();

/// Holds huge pages back for the rest of this process (and what it starts, until [`restore`]). Records the setting
/// it found first; a process started with them disabled keeps them disabled throughout.
pub fn hold_back() {
    let Ok(disabled) = rustix::thread::transparent_huge_pages_are_disabled() else {
        return;
    };
    if STARTED_DISABLED.set(disabled).is_ok() && !disabled {
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

/// Allows huge pages again when `nodes` declared nodes make the work large ([`LARGE`]), unless the process was
/// started with them disabled (or never held them back). Returns whether this call allowed them.
pub fn allow_for(nodes: usize) -> bool {
    nodes >= LARGE && allow()
}

/// [`allow_for`] from the configuration's size in bytes, known before it is parsed ([`LARGE_SOURCE`]): parsing a
/// large configuration is a good part of the memory a plan builds.
pub fn allow_for_source(bytes: usize) -> bool {
    bytes >= LARGE_SOURCE && allow()
}

fn allow() -> bool {
    STARTED_DISABLED.get() == Some(&false)
        && rustix::thread::disable_transparent_huge_pages(false).is_ok()
}

/// Puts back the setting the process was started with, for a program kip runs for the user next (`kip run`,
/// `kip connect`): it inherits the machine's policy, not kip's choice.
pub fn restore() {
    if let Some(&disabled) = STARTED_DISABLED.get() {
        let _ = rustix::thread::disable_transparent_huge_pages(disabled);
    }
}

/// The environment variable that hands the setting kip was started with to the supervisor it starts
/// ([`handed_on`], [`restore_handed_on`]): kip keeps working after the spawn, so it cannot [`restore`] its own.
pub const HANDED_ON: &str = "KIP_INHERITED_HUGE_PAGES";

/// The variable and value that carry the setting kip was started with to a child; `None` when there is nothing
/// to restore.
pub fn handed_on() -> Option<(&'static str, &'static str)> {
    STARTED_DISABLED
        .get()
        .map(|&disabled| (HANDED_ON, if disabled { "disabled" } else { "allowed" }))
}

/// In the supervisor: takes the setting the kip that started it was started with ([`handed_on`]), so that the
/// engines and processes it starts inherit the machine's own policy; without the variable (a supervisor started
/// by hand), the setting this process was started with ([`restore`]).
pub fn restore_handed_on() {
    let disabled = match std::env::var(HANDED_ON).as_deref() {
        Ok("disabled") => true,
        Ok("allowed") => false,
        _ => return restore(),
    };
    let _ = rustix::thread::disable_transparent_huge_pages(disabled);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_back_then_allowed_for_large_work_only() {
        let started_disabled = rustix::thread::transparent_huge_pages_are_disabled().unwrap();
        hold_back();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
        assert_eq!(STARTED_DISABLED.get(), Some(&started_disabled));
        assert!(!allow_for(LARGE - 1));
        assert!(!allow_for_source(LARGE_SOURCE - 1));
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
        assert_eq!(allow_for_source(LARGE_SOURCE), !started_disabled);
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().unwrap(),
            started_disabled
        );
        let _ = rustix::thread::disable_transparent_huge_pages(true);
        assert_eq!(allow_for(LARGE), !started_disabled);
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().unwrap(),
            started_disabled
        );
        // A second hold-back keeps the first record: the setting the process started with, which `restore` puts back.
        hold_back();
        assert_eq!(STARTED_DISABLED.get(), Some(&started_disabled));
        let _ = rustix::thread::disable_transparent_huge_pages(true);
        restore();
        assert_eq!(
            rustix::thread::transparent_huge_pages_are_disabled().unwrap(),
            started_disabled
        );
    }
}
