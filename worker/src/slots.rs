//! Inference slots of one kind: a semaphore whose size a downgrade profile can lower while jobs run. The
//! limit is lowered by withholding permits as running jobs give them back (a running job is never
//! interrupted to make room), and raised by returning them. It also counts the kind's jobs held by a
//! lease (`job/lease.rs`): their deliveries are settled, so the consumer lowers its prefetch by them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{Semaphore, watch};

pub struct Slots {
    pub semaphore: Arc<Semaphore>,
    configured: u32,
    withheld: Arc<AtomicU32>,
    target: watch::Sender<u32>,
    /// Jobs of this kind held by a lease, and a version bumped at every change.
    leased: watch::Sender<(u32, u64)>,
    /// The version of the leased count the consumer's prefetch reflects now.
    reflected: watch::Sender<u64>,
}

impl Slots {
    /// `configured` slots; call from inside a Tokio runtime (a governor task adjusts the limit).
    pub fn new(configured: u32) -> Self {
        let semaphore = Arc::new(Semaphore::new(configured as usize));
        let withheld = Arc::new(AtomicU32::new(0));
        let (target, rx) = watch::channel(configured);
        tokio::spawn(govern(semaphore.clone(), configured, withheld.clone(), rx));
        Slots {
            semaphore,
            configured,
            withheld,
            target,
            leased: watch::channel((0, 0)).0,
            reflected: watch::channel(0).0,
        }
    }

    /// One more job of this kind is held by a lease; returns the version of the count it made.
    pub fn lease_taken(&self) -> u64 {
        let mut version = 0;
        self.leased.send_modify(|(n, v)| {
            *n += 1;
            *v += 1;
            version = *v;
        });
        version
    }

    pub fn lease_released(&self) {
        self.leased.send_modify(|(n, v)| {
            *n = n.saturating_sub(1);
            *v += 1;
        });
    }

    pub fn leased(&self) -> u32 {
        self.leased.borrow().0
    }

    /// Follows the leased count and its version (the consumer's prefetch is the slots and overlap less
    /// the count).
    pub fn watch_leased(&self) -> watch::Receiver<(u32, u64)> {
        self.leased.subscribe()
    }

    /// The consumer says its prefetch (or the absence of a subscription) now reflects the leased count
    /// of `version`.
    pub fn reflect(&self, version: u64) {
        self.reflected.send_replace(version);
    }

    /// Waits until the consumer's prefetch reflects the leased count of `version` or a later one, so that
    /// settling a leased job's delivery does not let the broker hand out one more; false when that took
    /// longer than `within`.
    pub async fn reflected(&self, version: u64, within: std::time::Duration) -> bool {
        let mut rx = self.reflected.subscribe();
        tokio::time::timeout(within, rx.wait_for(|v| *v >= version)).await.is_ok_and(|r| r.is_ok())
    }

    /// Sets the limit (clamped to 1..=configured); `None` restores the configured number.
    pub fn set_limit(&self, limit: Option<u32>) {
        let limit = limit.unwrap_or(self.configured).clamp(1, self.configured);
        self.target.send_replace(limit);
    }

    /// Follows the limit being worked towards (consumers size their prefetch by it).
    pub fn watch_limit(&self) -> watch::Receiver<u32> {
        self.target.subscribe()
    }

    /// The limit being worked towards.
    pub fn limit(&self) -> u32 {
        *self.target.borrow()
    }

    /// Slots in force now (configured minus withheld), and how many of them are busy.
    pub fn usage(&self) -> (u32, u32) {
        let total = self.configured - self.withheld.load(Ordering::Relaxed);
        let free = self.semaphore.available_permits() as u32;
        (total, total.saturating_sub(free))
    }
}

async fn govern(
    semaphore: Arc<Semaphore>,
    configured: u32,
    withheld: Arc<AtomicU32>,
    mut target: watch::Receiver<u32>,
) {
    loop {
        let want = configured - *target.borrow_and_update();
        let have = withheld.load(Ordering::Relaxed);
        if have > want {
            semaphore.add_permits((have - want) as usize);
            withheld.store(want, Ordering::Relaxed);
            continue;
        }
        if have < want {
            tokio::select! {
                permit = semaphore.acquire() => {
                    let Ok(permit) = permit else { return };
                    permit.forget();
                    withheld.fetch_add(1, Ordering::Relaxed);
                }
                changed = target.changed() => if changed.is_err() { return },
            }
            continue;
        }
        if target.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn settle(slots: &Slots, total: u32) {
        for _ in 0..100 {
            if slots.usage().0 == total {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("expected {total} slots in force, found {:?}", slots.usage());
    }

    #[tokio::test]
    async fn lowering_waits_for_running_jobs_and_raising_returns_slots() {
        let slots = Slots::new(4);
        let busy: Vec<_> = (0..3).map(|_| slots.semaphore.clone().try_acquire_owned().unwrap()).collect();
        assert_eq!(slots.usage(), (4, 3));
        slots.set_limit(Some(1));
        // One free permit is withheld at once; the rest wait for running jobs.
        settle(&slots, 3).await;
        assert!(slots.semaphore.clone().try_acquire_owned().is_err(), "no new job may start");
        drop(busy);
        settle(&slots, 1).await;
        assert_eq!(slots.usage(), (1, 0));
        let one = slots.semaphore.clone().try_acquire_owned().unwrap();
        assert!(slots.semaphore.clone().try_acquire_owned().is_err());
        slots.set_limit(None);
        settle(&slots, 4).await;
        assert_eq!(slots.usage(), (4, 1));
        drop(one);
        assert_eq!(slots.semaphore.available_permits(), 4);
    }

    #[tokio::test]
    async fn limits_are_clamped() {
        let slots = Slots::new(2);
        slots.set_limit(Some(0));
        assert_eq!(slots.limit(), 1);
        slots.set_limit(Some(9));
        assert_eq!(slots.limit(), 2);
        settle(&slots, 2).await;
    }
}
