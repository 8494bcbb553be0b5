//! Commands from the hub or an operator on the control exchange (`worker.<id>` and `worker.all`):
//! cordon / uncordon, drain, cancel a job, apply / clear a downgrade profile.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_contract::{CONTROL_SCHEMA, Control, ControlCommand, WorkerState};
use ainern2d_queue::{QueueSpec, Subscription};
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::broker::Publisher;

/// How many cancelled-but-not-yet-seen job ids a worker remembers.
const REMEMBERED_CANCELS: usize = 10_000;

/// Subscribes to this worker's control commands: a queue of this session's own (commands are for live
/// workers, not for whoever connects next) bound to `worker.<id>` and `worker.all`. The runner does this
/// before the worker reports ready, so a command sent to a worker that is ready reaches it.
pub async fn subscribe(shared: &Shared, session: &Publisher) -> ainern2d_queue::Result<Box<dyn Subscription>> {
    let queue = session.declare_queue(&QueueSpec { exclusive: true, ..Default::default() }).await?;
    let exchange = shared.topology.control_exchange();
    for key in [format!("worker.{}", shared.config.worker_id), "worker.all".to_string()] {
        session.bind(&queue, &exchange, &key).await?;
    }
    session.subscribe(&queue, "control", 0).await
}

/// Consumes this worker's control commands until the session is lost; `fail` reports why it stopped.
pub async fn run(
    shared: Arc<Shared>,
    session: Publisher,
    mut subscription: Box<dyn Subscription>,
    jobs: TaskTracker,
    fail: impl Fn(String),
) {
    while let Some(delivery) = subscription.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => return fail(format!("control consumer: {e}")),
        };
        match serde_json::from_slice::<Control>(&delivery.message.body) {
            Ok(control) if control.schema == CONTROL_SCHEMA => apply(&shared, &session, &jobs, control.command).await,
            Ok(control) => tracing::warn!(schema = %control.schema, "ignoring a control message of an unknown schema"),
            Err(e) => tracing::warn!("ignoring a malformed control message: {e}"),
        }
        let _ = delivery.acker.ack(false).await;
    }
    fail("the broker cancelled the control consumer".into());
}

/// Applies one command. Pure state changes plus, for `drain`, a watcher that reports `drained`.
pub async fn apply(shared: &Arc<Shared>, publisher: &Publisher, jobs: &TaskTracker, command: ControlCommand) {
    tracing::info!(?command, "control command");
    match command {
        ControlCommand::Cordon => shared.set_state(WorkerState::Cordoned),
        ControlCommand::Uncordon => {
            if matches!(shared.state(), WorkerState::Cordoned | WorkerState::Draining | WorkerState::Drained) {
                shared.set_state(WorkerState::Ready);
            }
        }
        ControlCommand::Drain => {
            shared.set_state(WorkerState::Draining);
            let (shared, publisher, jobs) = (shared.clone(), publisher.clone(), jobs.clone());
            tokio::spawn(async move {
                while !jobs.is_empty() && shared.state() == WorkerState::Draining {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if shared.state() == WorkerState::Draining {
                    shared.set_state(WorkerState::Drained);
                    tracing::info!("drained: no job in flight, taking none");
                    crate::heartbeat::send(&shared, &publisher).await;
                }
            });
        }
        ControlCommand::Cancel { job_id } => match shared.running.cancel(&job_id) {
            true => {}
            false => {
                let mut cancelled = shared.cancelled.lock().expect("cancelled lock");
                if cancelled.len() >= REMEMBERED_CANCELS {
                    cancelled.pop_front();
                }
                cancelled.push_back(job_id);
            }
        },
        ControlCommand::ApplyDowngrade { profile } => shared.set_downgrade(Some(profile)),
        ControlCommand::ClearDowngrade => shared.set_downgrade(None),
    }
    crate::heartbeat::send(shared, publisher).await;
}
