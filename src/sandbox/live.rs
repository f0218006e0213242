//! An execution's stdout and stderr as the script writes them, for a caller that streams them
//! (`http/stream.rs`). The pipe readers hand over what they keep within the output caps, so
//! what is passed on never exceeds those caps, however slowly the caller takes it: the
//! channel is unbounded in length but bounded in bytes, and the readers never wait for it.
//!
//! An execution may take two attempts (a warm child that failed before the harness started is
//! run again cold): an attempt's output is held back until its harness says `started` (or the
//! attempt becomes the answer), so a caller never sees output of an attempt that is retried.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use super::process::{Captured, Pipe, Tap};
use crate::harness;

/// Which of the script's streams a chunk was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What the caller of a live execution learns, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The harness started: user code runs next.
    Started,
    /// Bytes the script wrote, in the order the service read them.
    Output { stream: Stream, bytes: Vec<u8> },
}

/// Where an execution's output goes as it is read. Dropping it (the execution is over) ends
/// the receiver's stream.
#[derive(Debug)]
pub struct Live {
    sender: mpsc::UnboundedSender<Event>,
}

impl Live {
    /// A sink for one execution's output, and the stream of what it passes on.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, receiver)
    }

    fn send(&self, event: Event) {
        // A receiver that is gone (the caller hung up) wants nothing more.
        let _ = self.sender.send(event);
    }
}

/// One attempt's tap: passes chunks on once the harness has started, holds them until then.
#[derive(Debug)]
pub(super) struct Attempt<'a> {
    live: &'a Live,
    state: Mutex<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    open: bool,
    held: Vec<Event>,
}

impl<'a> Attempt<'a> {
    pub(super) fn new(live: &'a Live) -> Self {
        Self {
            live,
            state: Mutex::default(),
        }
    }

    /// Passes on what was held, and all that follows: the attempt's output is part of the
    /// answer.
    pub(super) fn open(&self) {
        let mut gate = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        gate.open = true;
        for event in gate.held.drain(..) {
            self.live.send(event);
        }
    }
}

impl Tap for Attempt<'_> {
    fn read(&self, pipe: Pipe, captured: &Captured, kept: usize) {
        let stream = match pipe {
            Pipe::Stdout => Stream::Stdout,
            Pipe::Stderr => Stream::Stderr,
            // The first frame on the result pipe is `started`, before any user code runs.
            Pipe::Result => {
                let open = self
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .open;
                if !open && captured.bytes.contains(&b'\n') && harness::started(&captured.bytes) {
                    self.live.send(Event::Started);
                    self.open();
                }
                return;
            }
            Pipe::Log => return,
        };
        if kept == 0 {
            return;
        }
        let bytes = captured.bytes[captured.bytes.len() - kept..].to_vec();
        let event = Event::Output { stream, bytes };
        let mut gate = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if gate.open {
            drop(gate);
            self.live.send(event);
        } else {
            gate.held.push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(bytes: &[u8]) -> Captured {
        Captured {
            bytes: bytes.to_vec(),
            ..Captured::default()
        }
    }

    fn drain(receiver: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| receiver.try_recv().ok()).collect()
    }

    fn output(stream: Stream, bytes: &[u8]) -> Event {
        Event::Output {
            stream,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn output_is_held_until_the_harness_starts_then_passed_on_in_order() {
        let (live, mut receiver) = Live::channel();
        let attempt = Attempt::new(&live);
        attempt.read(Pipe::Stdout, &captured(b"early"), 5);
        attempt.read(Pipe::Stderr, &captured(b"err"), 3);
        attempt.read(Pipe::Result, &captured(b"{\"event\": \"sta"), 14);
        assert!(drain(&mut receiver).is_empty());
        let started = "{\"event\": \"started\", \"v\": 2}\n";
        attempt.read(Pipe::Result, &captured(started.as_bytes()), started.len());
        attempt.read(Pipe::Stdout, &captured(b"early, late"), 6);
        attempt.read(Pipe::Stdout, &captured(b"early, late"), 0);
        assert_eq!(
            drain(&mut receiver),
            vec![
                Event::Started,
                output(Stream::Stdout, b"early"),
                output(Stream::Stderr, b"err"),
                output(Stream::Stdout, b", late"),
            ]
        );
    }

    #[test]
    fn an_attempt_that_never_starts_passes_nothing_on() {
        let (live, mut receiver) = Live::channel();
        {
            let attempt = Attempt::new(&live);
            attempt.read(Pipe::Stderr, &captured(b"Fatal Python error"), 18);
            attempt.read(Pipe::Result, &captured(b"garbage\n"), 8);
        }
        drop(live);
        assert!(drain(&mut receiver).is_empty());
        assert!(receiver.try_recv().is_err());
    }
}
