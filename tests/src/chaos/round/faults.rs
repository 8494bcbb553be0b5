//! Injecting one scheduled fault, and recognising the phase a worker kill waits for.

use super::*;

impl Round {
    pub(super) async fn inject(self: Arc<Self>, fault: Fault) {
        let env = &self.env;
        match fault {
            Fault::KillWorker { slot, phase, jitter, restart_after } => {
                // In inference, land anywhere in the mock's latency, not only at its start.
                let jitter = match phase {
                    Phase::Inferring => jitter * (self.plan.latency_ms / 30).max(1) as u32,
                    _ => jitter,
                };
                // A trigger from a worker that is down already (its last events still arriving) is
                // waited for again.
                let mut victim = None;
                for _ in 0..3 {
                    let hit = self.wait_phase(phase).await;
                    tokio::time::sleep(jitter).await;
                    let (slot, label) = match hit {
                        Some(s) => (s, phase.name()),
                        None => (slot, "random"),
                    };
                    let mut candidates: Vec<usize> = vec![slot];
                    if hit.is_none() {
                        candidates.extend((0..self.slots.len()).filter(|s| *s != slot));
                    }
                    if let Some((s, w)) =
                        candidates.into_iter().find_map(|s| self.slots[s].lock().unwrap().take().map(|w| (s, w)))
                    {
                        victim = Some((s, w, label));
                        break;
                    }
                }
                let Some((slot, mut worker, label)) = victim else {
                    *self.figures.lock().unwrap().kills.entry("skipped".into()).or_default() += 1;
                    return;
                };
                worker.kill9();
                self.keep_log(&worker, &format!("worker{slot}-killed-{label}"));
                drop(worker);
                *self.figures.lock().unwrap().kills.entry(label.to_string()).or_default() += 1;
                tokio::time::sleep(restart_after).await;
                self.spawn_worker(slot);
            }
            Fault::BrokerRestart => {
                self.count_fault("broker-restart");
                env.broker.lock().await.restart().await;
            }
            Fault::BrokerCrash => {
                self.count_fault("broker-crash");
                env.broker.lock().await.crash_restart().await;
            }
            Fault::BrokerPause(d) => {
                self.count_fault("broker-pause");
                let broker = env.broker.lock().await;
                broker.pause();
                tokio::time::sleep(d).await;
                broker.resume();
            }
            Fault::S3 { fault, lasting } => {
                let mode = match fault {
                    S3Fault::Blackhole => Mode::Blackhole,
                    S3Fault::Latency(d) => Mode::Latency(d),
                    S3Fault::Reset { after_bytes } => Mode::Reset { after_bytes },
                };
                self.count_fault(Fault::S3 { fault, lasting }.label());
                for proxy in &env.proxies {
                    proxy.set_mode(mode.clone());
                }
                tokio::time::sleep(lasting).await;
                for proxy in &env.proxies {
                    proxy.set_mode(Mode::Pass);
                }
            }
            Fault::PostgresRestart { immediate, down_for } => {
                self.count_fault("postgres-restart");
                tokio::task::block_in_place(|| env.pg.restart(immediate, down_for));
            }
            Fault::HubKill { down_for } => {
                let taken = self.hub.lock().unwrap().take();
                let Some(mut hub) = taken else { return };
                self.count_fault("hub-kill");
                hub.kill9();
                self.keep_log(&hub, "hub-killed");
                drop(hub);
                tokio::time::sleep(down_for).await;
                self.spawn_hub();
            }
        }
    }

    /// The slot of the first worker seen in `phase` within the plan's trigger wait.
    async fn wait_phase(&self, phase: Phase) -> Option<usize> {
        // The one multipart job may be submitted last: wait for it as long as it may take.
        let wait = match phase {
            Phase::UploadingPart => self.plan.submit_over + Duration::from_secs(15),
            _ => self.plan.trigger_wait,
        };
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        let out = format!("/{}/out/", self.bucket);
        let input = format!("/{}/in/", self.bucket);
        match phase {
            Phase::Fetching | Phase::Uploading | Phase::UploadingPart | Phase::Publishing => {
                let mut rx = self.env.seen.subscribe();
                loop {
                    let seen = tokio::select! {
                        _ = &mut deadline => return None,
                        s = rx.recv() => match s {
                            Ok(s) => s,
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    let upload = |s: &Seen| s.target.starts_with(&out) && (s.method == "PUT" || s.method == "POST");
                    let hit = match phase {
                        Phase::Fetching => {
                            seen.status.is_none() && seen.method == "GET" && seen.target.starts_with(&input)
                        }
                        Phase::Uploading => seen.status.is_none() && upload(&seen),
                        Phase::UploadingPart => {
                            seen.status.is_none() && seen.method == "PUT" && seen.target.contains("partNumber=")
                        }
                        _ => {
                            // The answer that stores the object: a PUT's (not a part's), or the completion's.
                            seen.status == Some(200)
                                && upload(&seen)
                                && ((seen.method == "PUT" && !seen.target.contains("partNumber="))
                                    || (seen.method == "POST" && seen.target.contains("uploadId=")))
                        }
                    };
                    if hit && seen.proxy < self.slots.len() {
                        return Some(seen.proxy);
                    }
                }
            }
            Phase::Inferring | Phase::Acking => {
                let mut rx = self.tap.subscribe();
                loop {
                    let event = tokio::select! {
                        _ = &mut deadline => return None,
                        e = rx.recv() => match e {
                            Ok(e) => e,
                            Err(broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(broadcast::error::RecvError::Closed) => return None,
                        },
                    };
                    let hit = match phase {
                        Phase::Inferring => event.status == EventStatus::Progress,
                        _ => event.status.is_terminal(),
                    };
                    if hit && let Some(slot) = self.ids.lock().unwrap().get(&event.worker_id) {
                        return Some(*slot);
                    }
                }
            }
        }
    }
}
