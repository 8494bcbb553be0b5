//! Leases: how a job outlives the broker's consumer timeout. RabbitMQ closes the channel of a delivery
//! left unsettled for `consumer_timeout` and redelivers it, so without this a job longer than that runs
//! again and again and never finishes (on quorum queues each of those redeliveries also counts towards
//! the delivery limit).
//!
//! Once this worker has held a delivery for `jobs.lease_after_s`, whatever the job is doing, it takes a
//! lease:
//! 1. a copy of the job, marked with `x-ainern2d-lease`, goes to a fresh lease queue of its own whose
//!    message TTL is `jobs.lease_ttl_s` and whose dead-letter target is the job's queue (confirmed);
//! 2. the consumer lowers its prefetch by one — the job is still this worker's — and says so;
//! 3. the delivery is acked.
//!
//! Every third of the TTL the lease is renewed: a copy to a new lease queue, then the old queue deleted
//! (a deleted queue drops its messages, it does not dead-letter them). The job's outcome then settles the
//! lease instead of the delivery: an ack deletes the lease queue; a requeue (or a reject) publishes the
//! copy to the job queue (or the dead-letter exchange) first.
//!
//! When the worker dies or loses the broker nobody renews: the copy expires and dead-letters back to the
//! job queue within the TTL, and its header sends it through the replay check. A lease queue expires
//! (`x-expires`, 3 × TTL) after its copy is gone, so a dead worker leaves none behind. A crash between a
//! copy's confirm and the deletion of the queue (or the ack of the delivery) before it leaves two copies:
//! the second finds the first one's outputs, or runs again under the same event ids.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::LEASE_HEADER;
use ainern2d_queue::{Acker, Delivery, HeaderValue, Message, QueueError, QueueSpec};
use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::SessionCtx;
use crate::Shared;
use crate::broker::Publisher;
use crate::metrics::Metrics;

/// How long the taker waits for the consumer's prefetch to drop before it acks anyway.
const REFLECT_WITHIN: Duration = Duration::from_secs(2);

/// The lease side of one delivery; dropping it stops the renewals (an unsettled lease then lapses).
pub(super) struct Lease {
    stop: CancellationToken,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Puts the lease in front of `delivery`'s acker and starts the taker. `None` when leases are off.
pub(super) fn install(shared: &Arc<Shared>, ctx: &SessionCtx, kind: JobKind, delivery: &mut Delivery) -> Option<Lease> {
    let jobs = &shared.config.jobs;
    if jobs.lease_after_s == 0 {
        return None;
    }
    let ttl = Duration::from_secs(jobs.lease_ttl_s);
    let (copy, _) = super::copy::copy_of(&delivery.message);
    let copy = copy.with_header(LEASE_HEADER, HeaderValue::Text(shared.config.worker_id.clone()));
    let held = Arc::new(Mutex::new(Held {
        shared: shared.clone(),
        session: ctx.publisher.clone(),
        kind,
        ttl,
        copy,
        delivery: None,
        queue: None,
        stale: Vec::new(),
        settled: false,
    }));
    let own = std::mem::replace(&mut delivery.acker, Box::new(LeaseAcker(held.clone())));
    held.try_lock().expect("nobody else has it yet").delivery = Some(own);
    let stop = CancellationToken::new();
    let after = Duration::from_secs(jobs.lease_after_s);
    tokio::spawn(hold(held, after, ttl / 3, stop.clone()));
    Some(Lease { stop })
}

/// Takes the lease after `after`, then renews it every `every`, until the delivery is settled or the job's
/// handling ends. A renewal is never cut in half: the lock is held from the copy to the old queue's delete.
async fn hold(held: Arc<Mutex<Held>>, after: Duration, every: Duration, stop: CancellationToken) {
    let mut wait = after;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let mut h = held.lock().await;
        if h.settled || stop.is_cancelled() {
            return;
        }
        if h.queue.is_none() {
            h.take().await
        } else {
            h.renew().await
        }
        wait = every;
    }
}

struct Held {
    shared: Arc<Shared>,
    session: Publisher,
    kind: JobKind,
    ttl: Duration,
    /// What goes to each lease queue (and back to the job queue on a requeue).
    copy: Message,
    /// The delivery's own acker, until the lease has settled it.
    delivery: Option<Box<dyn Acker>>,
    /// The lease queue holding the live copy, once leased.
    queue: Option<String>,
    /// Lease queues whose deletion failed: their copies would come back; deleted again at every renewal.
    stale: Vec<String>,
    settled: bool,
}

impl Held {
    fn metric(&self, event: &str) {
        self.shared.metrics.lease(self.kind.as_str(), event);
    }

    fn spec(&self, name: String) -> QueueSpec {
        let ttl_ms = self.ttl.as_millis() as u64;
        QueueSpec {
            message_ttl_ms: Some(ttl_ms),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(self.shared.topology.job_queue(self.kind)),
            expires_ms: Some(3 * ttl_ms),
            // A lapsed lease's copy must survive a broker crash on its way back (as the retries do).
            durable_dead_letters: true,
            ..QueueSpec::durable(name)
        }
    }

    /// A fresh lease queue holding a confirmed copy.
    async fn put_copy(&self) -> Result<String, QueueError> {
        let name =
            self.shared.topology.lease_queue(&self.shared.config.worker_id, &uuid::Uuid::new_v4().simple().to_string());
        let within = self.ttl / 3;
        let put = async {
            self.session.declare_queue(&self.spec(name.clone())).await?;
            self.session.publish("", &name, &self.copy).await
        };
        match tokio::time::timeout(within, put).await {
            Ok(Ok(())) => Ok(name),
            Ok(Err(e)) => {
                self.delete(&name).await.ok();
                Err(e)
            }
            Err(_) => {
                self.delete(&name).await.ok();
                Err(QueueError::NotSettled("lease copy (no confirm in time)"))
            }
        }
    }

    async fn delete(&self, queue: &str) -> Result<(), QueueError> {
        match tokio::time::timeout(self.ttl / 3, self.session.delete_queue(queue)).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::NotSettled("lease queue delete (no answer in time)")),
        }
    }

    async fn take(&mut self) {
        let slots = &self.shared.slots[&self.kind];
        let name = match self.put_copy().await {
            Ok(name) => name,
            Err(e) => {
                self.metric("failed");
                tracing::warn!(error = %e, "could not take a lease; trying again in {:?}", self.ttl / 3);
                return;
            }
        };
        let version = slots.lease_taken();
        self.shared.metrics.leased.get_or_create(&Metrics::kind(self.kind.as_str())).inc();
        if !slots.reflected(version, REFLECT_WITHIN).await {
            tracing::warn!(
                "the consumer's prefetch did not drop within {REFLECT_WITHIN:?}; settling the delivery anyway"
            );
        }
        let own = self.delivery.as_ref().expect("an unleased delivery has its acker");
        match own.ack(false).await {
            Ok(()) => {
                self.delivery = None;
                tracing::info!(lease = %name, ttl = ?self.ttl, "the job is held by a lease from now on");
                self.queue = Some(name);
                self.metric("taken");
            }
            Err(e) => {
                self.release();
                self.metric("failed");
                if self.delete(&name).await.is_err() {
                    self.stale.push(name);
                }
                tracing::warn!(error = %e, "could not settle the delivery for a lease; it stays a delivery");
            }
        }
    }

    async fn renew(&mut self) {
        match self.put_copy().await {
            Ok(name) => {
                let old = self.queue.replace(name).expect("renewing a lease that is held");
                if self.delete(&old).await.is_err() {
                    self.stale.push(old);
                }
                self.metric("renewed");
            }
            Err(e) => {
                self.metric("failed");
                tracing::warn!(error = %e, lease = ?self.queue, "could not renew the lease; the copy it has comes back \
                    to the job queue within {:?} unless a renewal goes through", self.ttl);
            }
        }
        let mut stale = std::mem::take(&mut self.stale);
        for queue in stale.drain(..) {
            if self.delete(&queue).await.is_err() {
                self.stale.push(queue);
            }
        }
    }

    /// The leased count goes down once per lease.
    fn release(&mut self) {
        self.shared.slots[&self.kind].lease_released();
        self.shared.metrics.leased.get_or_create(&Metrics::kind(self.kind.as_str())).dec();
    }

    /// Settles the job: through the delivery while it is one, through the lease queue once leased.
    async fn settle(&mut self, requeue: Option<bool>) -> Result<(), QueueError> {
        let what = if requeue.is_some() { "nack" } else { "ack" };
        if self.settled {
            return Err(QueueError::NotSettled(what));
        }
        let Some(queue) = self.queue.clone() else {
            let own = self.delivery.as_ref().expect("an unleased delivery has its acker");
            let sent = match requeue {
                None => own.ack(false).await,
                Some(requeue) => own.nack(requeue).await,
            };
            self.settled = sent.is_ok();
            return sent;
        };
        if let Some(requeue) = requeue {
            // What the broker does with a nacked delivery, done with the copy: back to the job queue, or to
            // the job queue's dead-letter exchange.
            let topology = &self.shared.topology;
            let (exchange, key) = if requeue {
                (String::new(), topology.job_queue(self.kind))
            } else {
                (topology.dead_letter_exchange(), String::new())
            };
            self.session.publish(&exchange, &key, &self.copy).await?;
            self.settled = true;
            self.queue = None;
            self.release();
            self.metric("released");
            if self.delete(&queue).await.is_err() {
                tracing::warn!(lease = %queue, "the job went back to its queue, but its lease queue could not be \
                    deleted: a second copy comes back within {:?}", self.ttl);
            }
            return Ok(());
        }
        // An ack whose lease queue is still there would let the copy come back: not settled.
        self.delete(&queue).await?;
        self.settled = true;
        self.queue = None;
        self.release();
        self.metric("released");
        for stale in std::mem::take(&mut self.stale) {
            let _ = self.delete(&stale).await;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            // The session was lost (or the worker is exiting) before the outcome could settle the lease.
            tracing::warn!(lease = %queue, "the lease lapses; the job comes back to its queue within {:?}", self.ttl);
            self.release();
        }
    }
}

/// The delivery's acker while a lease may stand in for it.
struct LeaseAcker(Arc<Mutex<Held>>);

#[async_trait]
impl Acker for LeaseAcker {
    async fn ack(&self, _multiple: bool) -> Result<(), QueueError> {
        self.0.lock().await.settle(None).await
    }

    async fn nack(&self, requeue: bool) -> Result<(), QueueError> {
        self.0.lock().await.settle(Some(requeue)).await
    }
}
