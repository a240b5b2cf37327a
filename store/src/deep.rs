//! Walks of trees of any depth. Snapshot and restore recurse once per
//! directory level (through rayon, which adds frames of its own), and a
//! real tree can be thousands of levels deep (a tree deeper than PATH_MAX
//! is legal: only paths are limited, not depth). So those walks run on a
//! pool of their own whose threads have big stacks: address space is
//! reserved, memory is only used as deep as a walk actually goes.

use std::sync::OnceLock;

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Stack of each walking thread: room for well over 10,000 levels.
const STACK: usize = 512 << 20;

static POOL: OnceLock<Option<ThreadPool>> = OnceLock::new();

/// Runs `f` (and the rayon work it spawns) on the deep-walk pool; if that
/// pool cannot be made, on the caller's. A walk holds a directory handle
/// per level (and a restore one per directory with hard links to make), so
/// the open-files soft limit is raised to the hard limit first, quietly.
pub fn run<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
    let pool = POOL.get_or_init(|| {
        ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .stack_size(STACK)
            .thread_name(|i| format!("ds-walk-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}
