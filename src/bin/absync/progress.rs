//! The progress line `absync sync` shows on a terminal: the counts so far,
//! redrawn at most twice a second, fed by the engine through
//! [`absync::engine::Watch`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use absync::engine::Watch;
use absync::state::runs::Counts;

pub struct ProgressLine {
    last: Mutex<Instant>,
}

impl ProgressLine {
    pub fn new() -> ProgressLine {
        ProgressLine {
            last: Mutex::new(Instant::now()),
        }
    }
}

impl Watch for ProgressLine {
    fn entry(&self, c: &Counts) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_millis(500) {
            *last = Instant::now();
            eprint!(
                "\rpulled {}  added {}  modified {}  renamed {}  failed {}   ",
                c.pulled, c.added, c.modified, c.renamed, c.failed
            );
        }
    }

    fn done(&self) {
        eprintln!();
    }
}
