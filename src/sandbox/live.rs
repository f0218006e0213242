//! An execution's stdout and stderr as the script writes them, for a caller that streams them
//! (`http/stream.rs`). The pipe readers hand over what they keep within the output caps, and
//! never wait for the caller: what waits for it is a queue whose bytes never exceed those
//! caps, however slowly it is taken, and whose events are few, since output joins the event
//! before it while that one is of the same stream (and while the caller lags far behind, the
//! last of its stream: what two pipes write has no exact order between them anyway).
//!
//! An execution may take two attempts (a warm child that failed before the harness started is
//! run again cold): an attempt's output is held back until its harness says `started` (or the
//! attempt becomes the answer), so a caller never sees output of an attempt that is retried.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::process::{Captured, Pipe, Tap};
use crate::harness;

/// Events queued for a caller beyond which output only joins events already there.
const MAX_QUEUED: usize = 256;

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

/// Events not taken yet, with output joined as the module says.
#[derive(Debug, Default)]
struct Queue(VecDeque<Event>);

impl Queue {
    fn push(&mut self, event: Event) {
        let Event::Output { stream, bytes } = event else {
            self.0.push_back(event);
            return;
        };
        let joins =
            |event: &Event| matches!(event, Event::Output { stream: s, .. } if *s == stream);
        let into = match self.0.back() {
            Some(last) if joins(last) => self.0.back_mut(),
            _ if self.0.len() >= MAX_QUEUED => self.0.iter_mut().rev().find(|event| joins(event)),
            _ => None,
        };
        match into {
            Some(Event::Output { bytes: held, .. }) => held.extend_from_slice(&bytes),
            _ => self.0.push_back(Event::Output { stream, bytes }),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<(Queue, bool)>,
    ready: Notify,
}

/// Where an execution's output goes as it is read. Dropping it (the execution is over) ends
/// the receiver's events.
#[derive(Debug)]
pub struct Live(Arc<Shared>);

/// The events of one execution, for its caller.
#[derive(Debug)]
pub struct Events(Arc<Shared>);

impl Live {
    /// A sink for one execution's output, and the events it passes on.
    pub fn channel() -> (Self, Events) {
        let shared = Arc::new(Shared::default());
        (Self(Arc::clone(&shared)), Events(shared))
    }

    fn send(&self, event: Event) {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push(event);
        self.0.ready.notify_one();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = true;
        self.0.ready.notify_one();
    }
}

impl Events {
    /// The next event, once there is one; `None` once the execution is over and all are taken.
    /// Cancel-safe: an event is taken only by the call that returns it.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            {
                let mut queue = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(event) = queue.0.0.pop_front() {
                    return Some(event);
                }
                if queue.1 {
                    return None;
                }
            }
            // A notification sent since the check is kept as a permit: none is lost.
            self.0.ready.notified().await;
        }
    }

    /// The next event if one is queued now (for tests).
    #[cfg(test)]
    fn try_recv(&mut self) -> Option<Event> {
        self.0
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .0
            .pop_front()
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
    held: Queue,
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
        for event in std::mem::take(&mut gate.held).0 {
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

    fn drain(receiver: &mut Events) -> Vec<Event> {
        std::iter::from_fn(|| receiver.try_recv()).collect()
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
        assert!(receiver.try_recv().is_none());
    }

    #[test]
    fn output_joins_the_event_before_and_a_lagging_queue_stays_short() {
        let mut queue = Queue::default();
        queue.push(output(Stream::Stdout, b"a"));
        queue.push(output(Stream::Stdout, b"b"));
        assert_eq!(queue.0, [output(Stream::Stdout, b"ab")]);
        for turn in 0..10_000 {
            let stream = if turn % 2 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            queue.push(output(stream, b"x"));
        }
        assert!(queue.0.len() <= MAX_QUEUED, "{}", queue.0.len());
        let bytes = |wanted: Stream| -> usize {
            queue
                .0
                .iter()
                .map(|event| match event {
                    Event::Output { stream, bytes } if *stream == wanted => bytes.len(),
                    _ => 0,
                })
                .sum()
        };
        assert_eq!((bytes(Stream::Stdout), bytes(Stream::Stderr)), (5002, 5000));
    }

    #[tokio::test]
    async fn the_receiver_waits_for_events_and_ends_when_the_execution_does() {
        let (live, mut receiver) = Live::channel();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            live.send(Event::Started);
            live.send(output(Stream::Stdout, b"out"));
        });
        assert_eq!(receiver.recv().await, Some(Event::Started));
        assert_eq!(receiver.recv().await, Some(output(Stream::Stdout, b"out")));
        sender.await.unwrap();
        assert_eq!(receiver.recv().await, None);
    }
}
