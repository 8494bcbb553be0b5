//! The fake ComfyUI as a process of its own, for tests of a worker that supervises ComfyUI
//! (`comfyui.command`): something to start, kill and see restarted.
//!
//! `fake-comfyui --listen 127.0.0.1:PORT [--step-delay-ms N] [--stop-delay-ms N]` serves until SIGTERM or
//! SIGINT, then takes `--stop-delay-ms` to stop. Its SaveVideo
//! nodes (`3` in the `empty-video` template, `14` in `wan-i2v`) write a 2 s test clip.

use std::net::SocketAddr;
use std::time::Duration;

use ainern2d_tests::comfy::{Behaviour, FakeComfy, OutputFile};
use anyhow::{Context, bail};

struct Args {
    listen: SocketAddr,
    step_delay: Duration,
    /// How long it takes to stop after SIGTERM (a ComfyUI finishing its writes).
    stop_delay: Duration,
}

fn args() -> anyhow::Result<Args> {
    let mut listen = None;
    let mut step_delay = Duration::ZERO;
    let mut stop_delay = Duration::ZERO;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen takes HOST:PORT")?),
            "--step-delay-ms" => step_delay = Duration::from_millis(value()?.parse().context("--step-delay-ms")?),
            "--stop-delay-ms" => stop_delay = Duration::from_millis(value()?.parse().context("--stop-delay-ms")?),
            other => bail!(
                "unknown argument {other}; usage: fake-comfyui --listen HOST:PORT [--step-delay-ms N] [--stop-delay-ms N]"
            ),
        }
    }
    Ok(Args { listen: listen.context("--listen HOST:PORT is required")?, step_delay, stop_delay })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let dir = tempfile::tempdir()?;
    let clip = ainern2d_tests::test_clip(dir.path());
    let mut behaviour = Behaviour { step_delay: args.step_delay, ..Behaviour::default() };
    behaviour.outputs.insert("3".into(), OutputFile::path(&clip));
    behaviour.outputs.insert("14".into(), OutputFile::path(&clip));
    let fake = FakeComfy::start_on(args.listen, behaviour).await;
    println!("fake ComfyUI listening on {}", fake.url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    // A supervisor's test reads this from the worker's log: the child was stopped, not killed, and given
    // the time it took.
    tokio::time::sleep(args.stop_delay).await;
    println!("fake ComfyUI stopping on {signal}");
    // Dropped in order: the server, then the clip's directory.
    drop(fake);
    drop(dir);
    Ok(())
}
