//! The parallel walk of a dependency graph: every node runs once all its dependencies succeeded, up to
//! `parallelism` at once, each on its own thread; a node whose dependency failed (or was skipped) is skipped,
//! and reported once as skipped, not as another failure. A panic in a node's work fails that node like an
//! error, with the panic's message.
//!
//! Nodes are released as soon as their last dependency finishes (an in-degree countdown), which beats strict
//! waves: a slow node holds up only what depends on it.

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

/// Runs `work` for nodes `0..dependencies.len()`; `dependencies[i]` lists the nodes `i` waits for. Threads are
/// named `kip-apply-<i>` (the CLI's panic hook stays quiet for them: the walk reports their panics).
pub fn walk<E, W>(dependencies: &[Vec<usize>], parallelism: usize, work: W) -> Outcome<E>
where
    E: Send,
    W: Fn(usize) -> Result<(), E> + Sync,
{
    let count = dependencies.len();
    let mut waiting: Vec<usize> = dependencies.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (node, deps) in dependencies.iter().enumerate() {
        for &dependency in deps {
            dependents[dependency].push(node);
        }
    }
    let mut ready: VecDeque<usize> = (0..count).filter(|&node| waiting[node] == 0).collect();
    let mut failed = Vec::new();
    let mut skipped_flags = vec![false; count];
    let parallelism = parallelism.max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<(usize, Result<(), Failure<E>>)>();
        let mut running = 0;
        let mut finished = 0;
        while finished < count {
            while running < parallelism
                && let Some(node) = ready.pop_front()
            {
                let thread_sender = sender.clone();
                running += 1;
                let spawned = std::thread::Builder::new()
                    .name(format!("kip-apply-{node}"))
                    .spawn_scoped(scope, move || {
                        let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(node)));
                        let result = match result {
                            Ok(Ok(())) => Ok(()),
                            Ok(Err(error)) => Err(Failure::Error(error)),
                            Err(payload) => Err(Failure::Panic(panic_message(&*payload))),
                        };
                        let _ = thread_sender.send((node, result));
                    });
                if let Err(error) = spawned {
                    // Counted as running: the message below finishes it like any other.
                    let _ = sender.send((
                        node,
                        Err(Failure::Panic(format!("cannot start a thread: {error}"))),
                    ));
                }
            }
            let Ok((node, result)) = receiver.recv() else {
                break;
            };
            running -= 1;
            finished += 1;
            match result {
                Ok(()) => {
                    for &dependent in &dependents[node] {
                        waiting[dependent] -= 1;
                        if waiting[dependent] == 0 && !skipped_flags[dependent] {
                            ready.push_back(dependent);
                        }
                    }
                }
                Err(failure) => {
                    failed.push((node, failure));
                    // Everything downstream is skipped, once.
                    let mut stack = dependents[node].clone();
                    while let Some(dependent) = stack.pop() {
                        if !skipped_flags[dependent] {
                            skipped_flags[dependent] = true;
                            finished += 1;
                            stack.extend(dependents[dependent].iter().copied());
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
