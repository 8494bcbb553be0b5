//! The hub's waits between tries, all from one place: `backon`'s exponential backoff with jitter, so that
//! many hubs (or one hub's relay and its reconnect loops) that failed together do not retry in step.
//!
//! Loops that must reset after a success (a reconnect loop whose session lived for hours) hold the
//! iterator and build a fresh one when they succeed; a single operation retried until it succeeds uses
//! `backon::Retryable` with the same builders.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Never gives up: the hub has nothing better to do than to reach the broker or the database again.
fn forever(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times()
}

/// Between reconnects to the broker (ingestion and publishing sessions).
pub fn reconnect() -> ExponentialBuilder {
    forever(Duration::from_millis(250), Duration::from_secs(30))
}

/// Between tries of a database write that the broker's deliveries wait on.
pub fn database() -> ExponentialBuilder {
    forever(Duration::from_millis(200), Duration::from_secs(10))
}

/// Between the outbox relay's tries of one job's publish.
pub fn relay() -> ExponentialBuilder {
    forever(Duration::from_millis(500), Duration::from_secs(60))
}

/// A backoff that restarts from its shortest delay on `reset` (after a success).
pub struct Resettable {
    builder: ExponentialBuilder,
    current: <ExponentialBuilder as BackoffBuilder>::Backoff,
}

impl Resettable {
    pub fn new(builder: ExponentialBuilder) -> Self {
        Resettable { builder, current: builder.build() }
    }

    /// The next delay; grows (with jitter) until `reset`.
    pub fn next_delay(&mut self) -> Duration {
        // The builders above never end (`without_max_times`); should one end, keep waiting the longest.
        self.current.next().unwrap_or(Duration::from_secs(60))
    }

    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_jittered_up_to_the_cap_and_reset() {
        let mut b = Resettable::new(reconnect());
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(250) && first < Duration::from_millis(500), "{first:?}");
        let later: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        // Jitter adds up to the delay itself on top of the cap.
        assert!(later.iter().all(|d| *d <= Duration::from_secs(60)), "{later:?}");
        assert!(later.last().unwrap() >= &Duration::from_secs(30), "{later:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(500));
    }
}
