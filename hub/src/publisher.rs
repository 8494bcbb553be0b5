//! The hub's publishing session: jobs submitted through the API, the outbox relay's republishes and control
//! commands go out on a broker session of their own, never on the ingestion session, so that a slow or
//! broken publish does not stall event ingestion and a lost ingestion session does not fail the API.
//!
//! At every (re)connect the session declares the job topology it publishes to (`declare_jobs`, with the
//! worker's arguments), so a job submitted before any worker started is kept by its queue. A publish that
//! fails on the session (a closed channel, a message no queue took) ends the session: the loop connects
//! again and declares the topology again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use ainern2d_queue::{Message, QueueError, Session};
use tokio_util::sync::CancellationToken;

use crate::Hub;
use crate::backoff::{self, Resettable};

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the hub's publishing session is not connected to the broker")]
    NotConnected,
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The current publishing session and whether it is up.
#[derive(Default)]
pub(crate) struct Publisher {
    /// The session, with a token that a failed publish cancels to have the session replaced.
    current: std::sync::Mutex<Option<(Arc<dyn Session>, CancellationToken)>>,
    up: AtomicBool,
}

impl Publisher {
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn session(&self) -> Option<Arc<dyn Session>> {
        self.current.lock().expect("publisher lock").as_ref().map(|(s, _)| s.clone())
    }

    /// Publishes with a publisher confirm on the current session.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), PublishError> {
        let (session, broken) =
            self.current.lock().expect("publisher lock").clone().ok_or(PublishError::NotConnected)?;
        match session.publish(exchange, routing_key, message).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // A nack leaves the session usable; anything else (a closed channel, a queue deleted under a
                // mandatory publish) is mended by a fresh session that declares the topology again.
                if !matches!(e, QueueError::Nacked(_)) {
                    broken.cancel();
                }
                Err(e.into())
            }
        }
    }
}

/// Keeps a publishing session open until `shutdown`, reconnecting with backoff.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let topo = Topology::new(hub.config.broker.prefix.clone());
    let mut backoff = Resettable::new(backoff::reconnect());
    while !shutdown.is_cancelled() {
        let why = match open(&hub, &topo).await {
            Ok(session) => {
                backoff.reset();
                let broken = CancellationToken::new();
                let lost = session.lost();
                *hub.publisher.current.lock().expect("publisher lock") = Some((session.clone(), broken.clone()));
                hub.publisher.up.store(true, Ordering::Relaxed);
                tracing::info!(broker = %hub.broker.describe(), "publishing session open, job topology declared");
                let why = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    _ = lost.cancelled() => {
                        Some(session.lost_reason().unwrap_or_else(|| "the broker session was lost".into()))
                    }
                    _ = broken.cancelled() => Some("a publish failed on it".to_string()),
                };
                hub.publisher.up.store(false, Ordering::Relaxed);
                *hub.publisher.current.lock().expect("publisher lock") = None;
                ainern2d_queue::close(session.as_ref()).await;
                match why {
                    Some(why) => why,
                    None => break,
                }
            }
            Err(e) => format!("cannot open it: {e}"),
        };
        let delay = backoff.next_delay();
        tracing::warn!("publishing session: {why}; reconnecting in {delay:?}");
        tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => break }
    }
}

async fn open(hub: &Hub, topo: &Topology) -> Result<Arc<dyn Session>, QueueError> {
    let session = hub.broker.connect("ainern2d-hub publisher").await?;
    if let Err(e) = ainern2d_queue::topology::declare_jobs(session.as_ref(), topo, &JobKind::ALL).await {
        ainern2d_queue::close(session.as_ref()).await;
        return Err(e);
    }
    Ok(session)
}
