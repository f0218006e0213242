//! Admission of request bodies: the bytes of bodies being received, all requests together,
//! within a budget. A body holds room for what it announces (the largest body when it announces
//! none) while it is read, so a slow client holds only that, and a crowd of them is refused at
//! once instead of filling the service's memory. Owns the accounting and the read deadline;
//! not the reading itself, which is HTTP's (`http/extract.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;

/// The bytes of request bodies that may be in the service's hands at once.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max_body: usize,
    deadline: Duration,
}

/// Room for one body, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

/// The budget has no room for another body now.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("too many request bodies are being received at once")]
pub struct NoRoom;

impl BodyBudget {
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(server.body_budget_bytes)),
            max_body: server.max_body_bytes,
            deadline: server.body_read_timeout(),
        }
    }

    /// Reserves room for a body announcing `announced` bytes, or the largest body when it
    /// announces none; never waits.
    pub fn reserve(&self, announced: Option<usize>) -> Result<Reservation, NoRoom> {
        let bytes = announced
            .unwrap_or(self.max_body)
            // A body over the limit is refused as soon as it is announced; it needs no room.
            .min(self.max_body)
            .max(1);
        u32::try_from(bytes)
            .ok()
            .and_then(|bytes| Arc::clone(&self.bytes).try_acquire_many_owned(bytes).ok())
            .map(|permit| Reservation { _permit: permit })
            .ok_or(NoRoom)
    }

    /// How long a whole body may take to arrive, however it trickles.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(budget: usize, max_body: usize) -> BodyBudget {
        BodyBudget::new(&ServerConfig {
            body_budget_bytes: budget,
            max_body_bytes: max_body,
            ..ServerConfig::default()
        })
    }

    #[test]
    fn a_body_holds_what_it_announces_until_dropped() {
        let budget = budget(100, 60);
        let first = budget.reserve(Some(50)).unwrap();
        assert!(budget.reserve(Some(51)).is_err(), "50 + 51 > 100");
        let second = budget.reserve(Some(50)).unwrap();
        drop(first);
        assert!(budget.reserve(Some(50)).is_ok());
        drop(second);
    }

    #[test]
    fn an_unannounced_body_holds_the_largest_and_an_oversized_one_no_more() {
        let budget = budget(100, 60);
        let unannounced = budget.reserve(None).unwrap();
        assert!(budget.reserve(Some(41)).is_err(), "it holds 60");
        drop(unannounced);
        let oversized = budget.reserve(Some(1 << 40)).unwrap();
        assert!(budget.reserve(Some(40)).is_ok(), "it holds 60 too");
        drop(oversized);
    }
}
