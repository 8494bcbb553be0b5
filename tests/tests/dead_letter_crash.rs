//! A retry's way back to its job queue survives a broker crash (found by chaos round
//! `0xcfd24ad0d292d207`). A retry copy waits in a retry queue and is dead-lettered into the job queue when
//! its TTL expires; on a classic queue RabbitMQ's dead-lettering is at-most-once — the broker moves the
//! message without a confirm — so a node killed soon after the move can lose the job. The retry queues are
//! quorum queues with at-least-once dead-lettering: the message leaves the retry queue only once the job
//! queue has confirmed it.

use std::time::Duration;

use ainern2d_contract::JobKind;
use ainern2d_contract::topology::Topology;
use ainern2d_queue::amqp::AmqpBroker;
use ainern2d_queue::{Broker, Message, QueueSpec};
use ainern2d_tests::*;

/// Publishes a confirmed persistent copy to `spec` (a retry queue, 150 ms TTL) every 10 ms while a consumer
/// takes what reaches the job queue and acks nothing, kills the node in the middle of the stream, and
/// returns (confirmed, found after the restart in the retry and job queues).
async fn crash_mid_stream(broker: &mut PrivateBroker, topo: &Topology, spec: QueueSpec) -> (usize, u32) {
    let session = AmqpBroker::new(broker.url()).connect("dlx-crash").await.unwrap();
    ainern2d_queue::topology::declare_jobs(session.as_ref(), topo, &[JobKind::Llm]).await.unwrap();
    session.declare_queue(&spec).await.unwrap();
    let consumer = AmqpBroker::new(broker.url()).connect("dlx-consumer").await.unwrap();
    let mut jobs = consumer.subscribe(&topo.job_queue(JobKind::Llm), "w", 1000).await.unwrap();
    let taking = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(Ok(d)) = jobs.next().await {
            held.push(d);
        }
        held.len()
    });
    let publishing = {
        let name = spec.name.clone();
        tokio::spawn(async move {
            let mut confirmed = 0;
            for i in 0..400 {
                let mut m = Message::json(format!("{{\"n\": {i}}}").into_bytes());
                m.persistent = true;
                if session.publish("", &name, &m).await.is_err() {
                    break;
                }
                confirmed += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            confirmed
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.crash_restart().await;
    let confirmed = publishing.await.unwrap();
    let delivered = taking.await.unwrap();
    let session = AmqpBroker::new(broker.url()).connect("dlx-count").await.unwrap();
    // Copies whose move was under way resume after the restart: count once nothing changes for 2 s.
    let (mut in_retry, mut in_jobs, mut same) = (u32::MAX, u32::MAX, 0);
    while same < 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            session.queue_depth(&spec.name).await.unwrap().unwrap_or(0),
            session.queue_depth(&topo.job_queue(JobKind::Llm)).await.unwrap().unwrap_or(0),
        );
        same = if now == (in_retry, in_jobs) { same + 1 } else { 0 };
        (in_retry, in_jobs) = now;
    }
    println!(
        "  confirmed {confirmed}, delivered before the crash {delivered}, after it: {in_retry} in the retry queue, {in_jobs} in the job queue"
    );
    (confirmed, in_retry + in_jobs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_dead_lettered_into_its_job_queue_survives_a_broker_crash() {
    let mut broker = PrivateBroker::start().await;
    let mut classic_lost = 0;
    for round in 0..2 {
        let control = Topology::new(unique(&format!("dlx-classic{round}")));
        let classic = QueueSpec {
            durable_dead_letters: false,
            ..ainern2d_queue::topology::retry_queue(&control, JobKind::Llm, 0, 150)
        };
        let (confirmed, kept) = crash_mid_stream(&mut broker, &control, classic).await;
        classic_lost += confirmed.saturating_sub(kept as usize);
        println!(
            "classic retry queue, crash {round}: {} of {confirmed} confirmed copies lost",
            confirmed as i64 - kept as i64
        );

        let topo = Topology::new(unique(&format!("dlx-quorum{round}")));
        let spec = ainern2d_queue::topology::retry_queue(&topo, JobKind::Llm, 0, 150);
        assert!(spec.durable_dead_letters, "the topology's retry queues dead-letter at least once");
        let (confirmed, kept) = crash_mid_stream(&mut broker, &topo, spec).await;
        println!(
            "quorum retry queue, crash {round}: {} of {confirmed} confirmed copies lost",
            confirmed as i64 - kept as i64
        );
        assert!(kept as usize >= confirmed, "{} confirmed retries were lost in the crash", confirmed - kept as usize);
    }
    // The control: the same crash loses what a classic queue had moved (about 90 % here), so the run
    // above proves something.
    assert!(classic_lost > 0, "the classic control lost nothing: this crash does not show the defect");
}
