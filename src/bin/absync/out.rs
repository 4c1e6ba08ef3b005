//! Standard output for every command, and what happens when its reader
//! goes away. Rust ignores SIGPIPE, so a write to a closed pipe
//! (`absync status | head -1`) returns `BrokenPipe`: every write here
//! returns its error (never `println!`, which panics), notes a closed pipe,
//! and `main` ends such a command quietly with exit 0.

use std::fmt;
use std::io::{self, StdoutLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write to standard output found the pipe closed. Some errors
/// reach `main` as text only (the library's `StateError::Output`): this
/// remembers what they were.
static PIPE_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output, locked, noting a closed pipe.
pub struct Stdout(StdoutLock<'static>);

pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        noted(self.0.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        noted(self.0.flush())
    }
}

fn noted<T>(result: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            PIPE_CLOSED.store(true, Ordering::Relaxed);
        }
    }
    result
}

/// One line on standard output (what `outln!` writes).
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = stdout();
    writeln!(out, "{args}")?;
    out.flush()
}

/// `println!` that returns the write's error instead of panicking.
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// The command stopped because its reader closed the pipe: nothing is
/// wrong, the reader had what it wanted.
pub fn pipe_closed(e: &anyhow::Error) -> bool {
    PIPE_CLOSED.load(Ordering::Relaxed) || e.chain().any(is_broken_pipe)
}

fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_a_closed_pipe() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe))
            .context("writing the plan");
        assert!(pipe_closed(&e));
    }

    #[test]
    fn a_noted_broken_pipe_is_remembered() {
        let r: io::Result<()> = Err(io::ErrorKind::BrokenPipe.into());
        assert!(noted(r).is_err());
        assert!(PIPE_CLOSED.load(Ordering::Relaxed));
    }
}
