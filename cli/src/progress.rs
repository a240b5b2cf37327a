//! Progress bars on stderr, drawn only when stderr is a terminal (indicatif
//! hides itself otherwise), fed by polling the engine's atomic counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ds_store::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar that follows a [`Progress`] until dropped.
pub struct Bar {
    pub progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    pub fn new(verb: &'static str) -> Bar {
        let progress = Arc::new(Progress::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (progress.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("valid template"),
            );
            bar.set_prefix(verb);
            while !s.load(Ordering::Relaxed) {
                let (files, bytes, total) = p.snapshot();
                let elapsed = bar.elapsed().as_secs_f64().max(0.001);
                let of = if total > 0 {
                    format!(" of {}", crate::fmt::bytes(total))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "{files} files, {}{of} ({}/s)",
                    crate::fmt::bytes(bytes),
                    crate::fmt::bytes((bytes as f64 / elapsed) as u64)
                ));
                bar.tick();
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        Bar {
            progress,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
