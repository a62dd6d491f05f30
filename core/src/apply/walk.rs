//! The parallel walk of a dependency graph: every node runs once all its dependencies succeeded, up to
//! `parallelism` at once, each on its own thread; a node whose dependency failed (or was skipped) is skipped,
//! and reported once as skipped, not as another failure. A panic in a node's work fails that node like an
//! error, with the panic's message.
//!
//! Nodes are released as soon as their last dependency finishes (an in-degree countdown), which beats strict
//! waves: a slow node holds up only what depends on it.
//!
//! An edge may be *early* ([`walk_gated`]): the dependent needs the dependency only started, not finished (a
//! process's `wait_for` with `condition = "started"`). The dependency's work says when it started
//! ([`Started::signal`]); its finish counts as started too. A dependency that fails after it started does not skip
//! what needed it only started (that was released already); one that fails before skips it like any other.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

/// How a node's work failed.
#[derive(Debug)]
pub enum Failure<E> {
    Error(E),
    /// The work panicked; the panic's message.
    Panic(String),
}

/// What a walk did: the nodes that failed (with why), and the nodes skipped because a dependency failed, in
/// node order.
#[derive(Debug)]
pub struct Outcome<E> {
    pub failed: Vec<(usize, Failure<E>)>,
    pub skipped: Vec<usize>,
}

impl<E> Outcome<E> {
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && self.skipped.is_empty()
    }
}

/// What a node's work tells the walk while it runs.
enum Message<E> {
    /// The node started (see [`Started`]).
    Started(usize),
    Finished(usize, Result<(), Failure<E>>),
}

/// Handed to a node's work: [`Started::signal`] releases the nodes that need this one only started.
pub struct Started<'a> {
    send: Box<dyn Fn() + 'a>,
    sent: Cell<bool>,
    wanted: bool,
}

impl Started<'_> {
    /// A handle that releases nothing (for work run outside a walk).
    pub fn none() -> Started<'static> {
        Started {
            send: Box::new(|| {}),
            sent: Cell::new(false),
            wanted: false,
        }
    }

    /// Whether any node waits for this one's start (so that watching for it is worth its cost).
    pub fn wanted(&self) -> bool {
        self.wanted && !self.sent.get()
    }

    /// Says that the node started; only the first call counts.
    pub fn signal(&self) {
        if self.wanted && !self.sent.replace(true) {
            (self.send)();
        }
    }
}

/// Runs `work` for nodes `0..dependencies.len()`; `dependencies[i]` lists the nodes `i` waits for. Threads are
/// named `kip-apply-<i>` (the CLI's panic hook stays quiet for them: the walk reports their panics).
pub fn walk<E, W>(dependencies: &[Vec<usize>], parallelism: usize, work: W) -> Outcome<E>
where
    E: Send,
    W: Fn(usize) -> Result<(), E> + Sync,
{
    let early = vec![Vec::new(); dependencies.len()];
    walk_gated(dependencies, &early, parallelism, |node, _| work(node))
}

/// [`walk`] where `early[i]` lists the dependencies of `i` (among `dependencies[i]`) that `i` needs only started:
/// their work calls [`Started::signal`] when they are.
pub fn walk_gated<E, W>(
    dependencies: &[Vec<usize>],
    early: &[Vec<usize>],
    parallelism: usize,
    work: W,
) -> Outcome<E>
where
    E: Send,
    W: Fn(usize, &Started<'_>) -> Result<(), E> + Sync,
{
    let count = dependencies.len();
    let mut waiting: Vec<usize> = dependencies.iter().map(Vec::len).collect();
    // Each dependent with whether it needs the node only started.
    let mut dependents: Vec<Vec<(usize, bool)>> = vec![Vec::new(); count];
    for (node, deps) in dependencies.iter().enumerate() {
        for &dependency in deps {
            let only_started = early
                .get(node)
                .is_some_and(|early| early.contains(&dependency));
            dependents[dependency].push((node, only_started));
        }
    }
    let wanted: Vec<bool> = dependents
        .iter()
        .map(|dependents| dependents.iter().any(|(_, only_started)| *only_started))
        .collect();
    // Whether the node said it started (its early dependents were counted down then).
    let mut started = vec![false; count];
    let mut ready: VecDeque<usize> = (0..count).filter(|&node| waiting[node] == 0).collect();
    let mut failed = Vec::new();
    let mut skipped_flags = vec![false; count];
    let parallelism = parallelism.max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<Message<E>>();
        let mut running = 0;
        let mut finished = 0;
        while finished < count {
            while running < parallelism
                && let Some(node) = ready.pop_front()
            {
                let thread_sender = sender.clone();
                let wanted = wanted[node];
                running += 1;
                let spawned = std::thread::Builder::new()
                    .name(format!("kip-apply-{node}"))
                    .spawn_scoped(scope, move || {
                        let signal_sender = thread_sender.clone();
                        let handle = Started {
                            send: Box::new(move || {
                                let _ = signal_sender.send(Message::Started(node));
                            }),
                            sent: Cell::new(false),
                            wanted,
                        };
                        let result =
                            std::panic::catch_unwind(AssertUnwindSafe(|| work(node, &handle)));
                        let result = match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(Failure::Error(error)),
                            Err(payload) => Err(Failure::Panic(panic_message(&*payload))),
                        };
                        // On the same channel as the start signal, after it.
                        let _ = thread_sender.send(Message::Finished(node, result));
                    });
                if let Err(error) = spawned {
                    // Counted as running: the message below finishes it like any other.
                    let _ = sender.send(Message::Finished(
                        node,
                        Err(Failure::Panic(format!("cannot start a thread: {error}"))),
                    ));
                }
            }
            let Ok(message) = receiver.recv() else {
                break;
            };
            let (node, result) = match message {
                Message::Started(node) => {
                    release_started(
                        node,
                        &mut started,
                        &dependents,
                        &mut waiting,
                        &skipped_flags,
                        &mut ready,
                    );
                    continue;
                }
                Message::Finished(node, result) => (node, result),
            };
            running -= 1;
            finished += 1;
            match result {
                Ok(()) => {
                    for &(dependent, only_started) in &dependents[node] {
                        if only_started && started[node] {
                            continue;
                        }
                        waiting[dependent] -= 1;
                        if waiting[dependent] == 0 && !skipped_flags[dependent] {
                            ready.push_back(dependent);
                        }
                    }
                }
                Err(failure) => {
                    failed.push((node, failure));
                    // Everything downstream is skipped, once; what needed this node only started and was released
                    // when it started is not.
                    let mut stack: Vec<usize> = dependents[node]
                        .iter()
                        .filter(|(_, only_started)| !(*only_started && started[node]))
                        .map(|(dependent, _)| *dependent)
                        .collect();
                    while let Some(dependent) = stack.pop() {
                        if !skipped_flags[dependent] {
                            skipped_flags[dependent] = true;
                            finished += 1;
                            stack.extend(dependents[dependent].iter().map(|(next, _)| *next));
                        }
                    }
                }
            }
        }
    });
    failed.sort_by_key(|(node, _)| *node);
    Outcome {
        failed,
        skipped: (0..count).filter(|&node| skipped_flags[node]).collect(),
    }
}

/// Counts down the dependents that need `node` only started, once.
fn release_started(
    node: usize,
    started: &mut [bool],
    dependents: &[Vec<(usize, bool)>],
    waiting: &mut [usize],
    skipped: &[bool],
    ready: &mut VecDeque<usize>,
) {
    if std::mem::replace(&mut started[node], true) {
        return;
    }
    for &(dependent, only_started) in &dependents[node] {
        if only_started {
            waiting[dependent] -= 1;
            if waiting[dependent] == 0 && !skipped[dependent] {
                ready.push_back(dependent);
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn independent_nodes_run_in_parallel_up_to_the_limit_and_dependents_after() {
        // 0 and 1 and 2 are independent; 3 waits for 0 and 1; 4 waits for 3.
        let dependencies = vec![vec![], vec![], vec![], vec![0, 1], vec![3]];
        let at_once = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let order = Mutex::new(Vec::new());
        let outcome: Outcome<()> = walk(&dependencies, 2, |node| {
            let now = at_once.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            order.lock().unwrap().push(node);
            at_once.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        });
        assert!(outcome.is_success());
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "parallel, and never more than 2"
        );
        let order = order.into_inner().unwrap();
        let position = |node| order.iter().position(|&n| n == node).unwrap();
        assert!(position(3) > position(0) && position(3) > position(1));
        assert!(position(4) > position(3));
    }

    #[test]
    fn a_failure_skips_everything_downstream_once_and_independent_work_goes_on() {
        // 0 fails; 1 and 2 depend on it (2 also through 1); 3 is independent.
        let dependencies = vec![vec![], vec![0], vec![0, 1], vec![]];
        let ran = Mutex::new(Vec::new());
        let outcome = walk(&dependencies, 4, |node| {
            ran.lock().unwrap().push(node);
            if node == 0 { Err("broken") } else { Ok(()) }
        });
        assert_eq!(outcome.failed.len(), 1);
        assert!(matches!(outcome.failed[0], (0, Failure::Error("broken"))));
        assert_eq!(outcome.skipped, [1, 2]);
        let mut ran = ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran, [0, 3]);
    }

    #[test]
    fn a_node_that_needs_another_only_started_runs_once_it_signalled() {
        // 1 needs 0 only started; 2 needs 0 finished.
        let dependencies = vec![vec![], vec![0], vec![0]];
        let early = vec![vec![], vec![0], vec![]];
        let events = Mutex::new(Vec::new());
        let outcome: Outcome<()> = walk_gated(&dependencies, &early, 3, |node, started| {
            events.lock().unwrap().push(format!("{node} begins"));
            if node == 0 {
                started.signal();
                std::thread::sleep(Duration::from_millis(200));
            }
            events.lock().unwrap().push(format!("{node} ends"));
            Ok(())
        });
        assert!(outcome.is_success());
        let events = events.into_inner().unwrap();
        let position = |event: &str| events.iter().position(|e| e == event).unwrap();
        assert!(position("1 begins") < position("0 ends"), "{events:?}");
        assert!(position("2 begins") > position("0 ends"), "{events:?}");
    }

    #[test]
    fn a_failure_after_the_start_signal_skips_only_what_needed_it_finished() {
        // 0 signals, then fails; 1 needs it only started, 2 finished, 3 needs 2; 4 needs 5 only started, and 5
        // fails before it signals.
        let dependencies = vec![vec![], vec![0], vec![0], vec![2], vec![5], vec![]];
        let early = vec![vec![], vec![0], vec![], vec![], vec![5], vec![]];
        let ran = Mutex::new(Vec::new());
        let outcome = walk_gated(&dependencies, &early, 4, |node, started| {
            ran.lock().unwrap().push(node);
            match node {
                0 => {
                    started.signal();
                    std::thread::sleep(Duration::from_millis(100));
                    Err("broke after it started")
                }
                5 => Err("broke before it started"),
                _ => Ok(()),
            }
        });
        assert_eq!(outcome.failed.len(), 2);
        assert_eq!(outcome.skipped, [2, 3, 4]);
        let mut ran = ran.into_inner().unwrap();
        ran.sort();
        assert_eq!(ran, [0, 1, 5]);
    }

    #[test]
    fn a_panic_is_a_failure_with_its_message() {
        let dependencies = vec![vec![], vec![0]];
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome: Outcome<()> = walk(&dependencies, 2, |node| {
            if node == 0 {
                panic!("the provider lost its mind");
            }
            Ok(())
        });
        std::panic::set_hook(previous);
        match &outcome.failed[..] {
            [(0, Failure::Panic(message))] => assert_eq!(message, "the provider lost its mind"),
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome.skipped, [1]);
    }
}
