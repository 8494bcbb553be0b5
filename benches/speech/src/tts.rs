//! `speech-bench tts`: the `audio` pipeline (espeak-ng through FFI, Piper's ids, ONNX Runtime, WAV through
//! FFmpeg) against `piper-tts` in a Python process of its own (`piper_peer.py`), on the same voice, text and
//! ONNX Runtime thread count. The real-time factor is compute seconds per second of speech (lower is
//! faster); both sides add no silence between sentences, so the audio lengths differ only by the voice's
//! noise.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use ainern2d_contract::parse_job;
use ainern2d_pipelines::onnx::OnnxConfig;
use ainern2d_pipelines::tts::{TtsConfig, TtsPipeline};
use ainern2d_pipelines::{CancellationToken, NoProgress, RunRequest};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The Piper voice (`<voice>.onnx`, its config beside it as `<voice>.onnx.json`).
    #[arg(long, env = "AINERN2D_TEST_PIPER_VOICE")]
    voice: PathBuf,
    /// A Python with `piper-tts` 1.8 installed.
    #[arg(long, env = "AINERN2D_TEST_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// ONNX Runtime threads per operator, on both sides.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The text spoken (default: six sentences of narration, 70 words).
    #[arg(long)]
    text: Option<String>,
    /// Also write every round's figures here, as JSON (for `compare`'s row 11).
    #[arg(long)]
    json: Option<PathBuf>,
}

const TEXT: &str = "The harbour was quiet before the storm arrived. Gulls circled low over the grey water, \
    and the fishing boats stayed tied to the pier. At the end of the breakwater, the old lighthouse keeper \
    climbed the stairs one more time. He lit the lamp, checked the lens, and wrote the hour in his log. \
    Then the first wave broke against the rocks! Would the ships see his light tonight?";

/// One round's figures, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Round {
    phonemize: f64,
    inference: f64,
    encode: f64,
    wall: f64,
    audio: f64,
}

impl Round {
    fn rtf(&self) -> f64 {
        self.wall / self.audio
    }
}

/// `piper_peer.py`, waiting for texts on its stdin.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(args: &Args, out: &std::path::Path) -> anyhow::Result<(Peer, String)> {
        let script = super::repo().join("benches/speech/piper_peer.py");
        let mut child = Command::new(&args.python)
            .arg(&script)
            .arg("--model")
            .arg(&args.voice)
            .args(["--threads", &args.threads.to_string(), "--out"])
            .arg(out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.python.display()))?;
        let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let mut peer = Peer { child, stdin, stdout: BufReader::new(stdout) };
        let ready = peer.answer().map_err(|e| {
            anyhow::anyhow!(
                "piper-tts did not start ({e}); install it into that Python: {} -m pip install piper-tts==1.8.0",
                args.python.display()
            )
        })?;
        Ok((peer, ready["onnxruntime"].as_str().unwrap_or("?").to_string()))
    }

    fn answer(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut line)? > 0, "the peer exited");
        Ok(serde_json::from_str(&line)?)
    }

    fn speak(&mut self, text: &str) -> anyhow::Result<Round> {
        writeln!(self.stdin, "{}", serde_json::json!({ "text": text }))?;
        let a = self.answer()?;
        let f = |k: &str| a[k].as_f64().ok_or_else(|| anyhow::anyhow!("peer answer lacks {k}: {a}"));
        Ok(Round {
            phonemize: f("phonemize_s")?,
            inference: f("inference_s")?,
            encode: f("encode_s")?,
            wall: f("wall_s")?,
            audio: f("audio_s")?,
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let voice = super::existing(args.voice.clone(), "run scripts/test.sh (it installs the joe voice)")?;
    let text = args.text.clone().unwrap_or_else(|| TEXT.split_whitespace().collect::<Vec<_>>().join(" "));
    let dir = tempfile::tempdir()?;
    let manifest = format!(
        "device = \"cpu\"\n[models.voice]\nkind = \"tts\"\nformat = \"onnx\"\nsource = {:?}\n",
        voice.display().to_string()
    );
    let onnx = OnnxConfig { runtime_path: None, strict_device: false, intra_threads: args.threads };
    let pipeline = TtsPipeline::new(super::models(&manifest, dir.path())?, onnx, TtsConfig::default());
    let job = parse_job(&serde_json::to_vec(&serde_json::json!({
        "schema": "ainern2d.job.v1", "job_id": "bench", "kind": "audio", "output": {"prefix": "bench"},
        "params": {"text": text, "voice": "voice", "sentence_silence_s": 0.0},
    }))?)?;
    let ours = || -> anyhow::Result<Round> {
        let work = tempfile::tempdir()?;
        let req = RunRequest {
            job: &job,
            attempt: 1,
            inputs: Default::default(),
            workdir: work.path().into(),
            downgrade: None,
        };
        let started = Instant::now();
        let (out, t) =
            pipeline.run_timed(&req, &NoProgress, &CancellationToken::new()).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(Round {
            phonemize: t.phonemize.as_secs_f64(),
            inference: t.inference.as_secs_f64(),
            encode: t.encode.as_secs_f64(),
            wall: started.elapsed().as_secs_f64(),
            audio: out.execution.duration_s.unwrap_or(f64::NAN),
        })
    };
    let (mut peer, peer_ort) = Peer::start(&args, &dir.path().join("peer.wav"))?;
    // Warm-up, not counted: loads the voice on our side, the first espeak-ng call on both.
    let load = Instant::now();
    ours()?;
    eprintln!("pipeline warm-up (voice load + first run): {:.2}s", load.elapsed().as_secs_f64());
    peer.speak(&text)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which runs first, so neither always gets the warmer (or the throttled) machine.
        let (x, y) = if round % 2 == 0 {
            let x = ours()?;
            (x, peer.speak(&text)?)
        } else {
            let y = peer.speak(&text)?;
            (ours()?, y)
        };
        eprintln!(
            "round {}: pipeline RTF {:.3} ({:.2}s audio), piper-tts RTF {:.3} ({:.2}s audio)",
            round + 1,
            x.rtf(),
            x.audio,
            y.rtf(),
            y.audio
        );
        a.push(x);
        b.push(y);
    }
    let med = |v: &[Round], f: fn(&Round) -> f64| super::median(v.iter().map(f).collect());
    let report = |name: &str, v: &[Round]| {
        println!(
            "  {name:<10} RTF {:.3}  phonemize {:.1} ms  inference {:.1} ms  encode {:.1} ms  wall {:.1} ms  audio {:.2} s",
            med(v, Round::rtf),
            med(v, |r| r.phonemize) * 1e3,
            med(v, |r| r.inference) * 1e3,
            med(v, |r| r.encode) * 1e3,
            med(v, |r| r.wall) * 1e3,
            med(v, |r| r.audio),
        );
    };
    println!(
        "tts, voice {}, {} characters, {} thread(s), {} rounds (medians; ONNX Runtime: ours {}, piper-tts's {peer_ort}):",
        voice.file_name().unwrap_or_default().to_string_lossy(),
        text.chars().count(),
        args.threads,
        args.rounds,
        OnnxConfig::default()
            .library()
            .and_then(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default(),
    );
    report("pipeline", &a);
    report("piper-tts", &b);
    println!("  speed ratio (piper-tts RTF / pipeline RTF): {:.2}x", med(&b, Round::rtf) / med(&a, Round::rtf));
    if let Some(path) = &args.json {
        let rtf = |v: &[Round]| v.iter().map(Round::rtf).collect::<Vec<_>>();
        let figures = serde_json::json!({
            "voice": voice.file_name().unwrap_or_default().to_string_lossy(),
            "characters": text.chars().count(),
            "threads": args.threads,
            "peer_onnxruntime": peer_ort,
            "pipeline": {"rtf": rtf(&a), "rounds": a},
            "piper_tts": {"rtf": rtf(&b), "rounds": b},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
    }
    Ok(())
}
