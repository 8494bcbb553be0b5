//! Commands from the hub or an operator on the control exchange (`worker.<id>` and `worker.all`):
//! cordon / uncordon, drain, cancel a job, apply / clear a downgrade profile.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ainern2d_contract::{CONTROL_SCHEMA, Control, ControlCommand, WorkerState};
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::broker::Publisher;

/// How many cancelled-but-not-yet-seen job ids a worker remembers.
const REMEMBERED_CANCELS: usize = 10_000;

pub async fn run(
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    publisher: Publisher,
    jobs: TaskTracker,
    lost: CancellationToken,
    lost_reason: Arc<OnceLock<String>>,
) {
    let fail = |why: String| {
        let _ = lost_reason.set(why);
        lost.cancel();
    };
    let setup = async {
        let ch = conn.create_channel().await?;
        let queue = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        let exchange = shared.topology.control_exchange();
        for key in [format!("worker.{}", shared.config.worker_id), "worker.all".to_string()] {
            ch.queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        let consumer = ch
            .basic_consume(
                queue.name().clone(),
                "control".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>(consumer)
    };
    let mut consumer = match setup.await {
        Ok(c) => c,
        Err(e) => return fail(format!("subscribing to control commands: {e}")),
    };
    while let Some(delivery) = consumer.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => return fail(format!("control consumer: {e}")),
        };
        match serde_json::from_slice::<Control>(&delivery.data) {
            Ok(control) if control.schema == CONTROL_SCHEMA => apply(&shared, &publisher, &jobs, control.command).await,
            Ok(control) => tracing::warn!(schema = %control.schema, "ignoring a control message of an unknown schema"),
            Err(e) => tracing::warn!("ignoring a malformed control message: {e}"),
        }
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
    }
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
        ControlCommand::Cancel { job_id } => {
            let running = shared.running.lock().expect("running lock").get(&job_id).cloned();
            match running {
                Some(token) => token.cancel(),
                None => {
                    let mut cancelled = shared.cancelled.lock().expect("cancelled lock");
                    if cancelled.len() >= REMEMBERED_CANCELS {
                        cancelled.pop_front();
                    }
                    cancelled.push_back(job_id);
                }
            }
        }
        ControlCommand::ApplyDowngrade { profile } => {
            *shared.downgrade.write().expect("downgrade lock") = Some(profile)
        }
        ControlCommand::ClearDowngrade => *shared.downgrade.write().expect("downgrade lock") = None,
    }
    crate::heartbeat::send(shared, publisher).await;
}
