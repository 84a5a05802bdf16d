//! The progress line a long `ferryctl` command keeps on stderr: rewritten in place on a
//! terminal, printed as lines (as often as asked) anywhere else, such as a CI log.

use std::fmt::Display;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A progress line on stderr.
#[derive(Debug)]
pub struct ProgressLine {
    tty: bool,
    /// How often a line is printed when stderr is not a terminal (`None`: every update).
    every: Option<Duration>,
    last: Option<Instant>,
}

impl ProgressLine {
    /// A progress line printing every update off a terminal, or one every `every`.
    pub fn new(every: Option<Duration>) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            every,
            last: None,
        }
    }

    /// Shows `line`: in place on a terminal; elsewhere as a line when one is due.
    pub fn show(&mut self, line: &impl Display) {
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else if self
            .every
            .is_none_or(|every| self.last.is_none_or(|at| at.elapsed() >= every))
        {
            eprintln!("{line}");
            self.last = Some(Instant::now());
        }
    }

    /// Shows `line` as the last one, kept on the screen, whenever the last line was printed.
    pub fn finish(&mut self, line: &impl Display) {
        self.clear();
        eprintln!("{line}");
    }

    /// Clears the line on a terminal (before other output, or at the end).
    pub fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}
