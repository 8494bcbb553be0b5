//! The jobs in flight on this worker, by job id: how a `cancel` command finds every delivery of a job
//! (whatever stage it is in, the replay check included), and how two deliveries of one job on this
//! worker (a redelivery that arrived while the first run went on after a lost connection) run one
//! after the other, so the second finds the first's outputs instead of running again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Registry {
    jobs: Mutex<HashMap<String, Entry>>,
    ids: AtomicU64,
}

struct Entry {
    deliveries: Vec<(u64, CancellationToken)>,
    exclusive: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// Registers a delivery of `job_id` whose work stops when `cancel` fires; it stays registered until
    /// the returned value is dropped.
    pub fn register(self: &Arc<Self>, job_id: &str, cancel: CancellationToken) -> Registration {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut jobs = self.jobs.lock().expect("registry lock");
        let entry = jobs
            .entry(job_id.to_string())
            .or_insert_with(|| Entry { deliveries: Vec::new(), exclusive: Arc::default() });
        entry.deliveries.push((id, cancel));
        Registration { registry: self.clone(), job_id: job_id.to_string(), id, exclusive: entry.exclusive.clone() }
    }

    /// Cancels every delivery of `job_id` here; false when there is none.
    pub fn cancel(&self, job_id: &str) -> bool {
        let jobs = self.jobs.lock().expect("registry lock");
        let Some(entry) = jobs.get(job_id) else { return false };
        for (_, token) in &entry.deliveries {
            token.cancel();
        }
        true
    }

    /// Job ids in flight.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Registration {
    registry: Arc<Registry>,
    job_id: String,
    id: u64,
    exclusive: Arc<tokio::sync::Mutex<()>>,
}

impl Registration {
    /// Waits until no other delivery of this job runs here.
    pub async fn exclusive(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.exclusive.clone().lock_owned().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut jobs = self.registry.jobs.lock().expect("registry lock");
        if let Some(entry) = jobs.get_mut(&self.job_id) {
            entry.deliveries.retain(|(id, _)| *id != self.id);
            if entry.deliveries.is_empty() {
                jobs.remove(&self.job_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_reaches_every_delivery_and_runs_are_one_at_a_time() {
        let registry = Arc::new(Registry::default());
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let first = registry.register("j", a.clone());
        let second = registry.register("j", b.clone());
        let held = first.exclusive().await;
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), second.exclusive()).await.is_err());
        drop(held);
        let _ = second.exclusive().await;
        assert!(registry.cancel("j"));
        assert!(a.is_cancelled() && b.is_cancelled());
        drop((first, second));
        assert!(registry.is_empty());
        // A later delivery of the same job starts with a fresh token: an old cancel does not reach it.
        let c = CancellationToken::new();
        let _third = registry.register("j", c.clone());
        assert!(!c.is_cancelled());
        assert!(!registry.cancel("other"));
    }
}
