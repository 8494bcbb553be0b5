//! llama.cpp as the bench's peer: `llama_peer.py` (`llama-cpp-python`) in a Python process of its own,
//! loaded once, one round per request line on its stdin.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::Value;

use crate::Round;

pub struct LlamaCpp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the peer said when it was ready (its version, llama.cpp's system info).
    pub ready: Value,
}

impl LlamaCpp {
    pub fn start(python: &Path, gguf: &Path, threads: usize, context: usize) -> anyhow::Result<LlamaCpp> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("llama_peer.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--model")
            .arg(gguf)
            .args(["--threads", &threads.to_string(), "--ctx", &context.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", python.display()))?;
        let (stdin, stdout) = (child.stdin.take().expect("piped"), child.stdout.take().expect("piped"));
        let mut peer = LlamaCpp { child, stdin, stdout: BufReader::new(stdout), ready: Value::Null };
        peer.ready = peer.answer().map_err(|e| {
            anyhow::anyhow!(
                "llama-cpp-python did not start ({e}); install it into that Python: {} -m pip install \
                 llama-cpp-python==0.3.36",
                python.display()
            )
        })?;
        Ok(peer)
    }

    fn answer(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut line)? > 0, "the peer exited");
        Ok(serde_json::from_str(&line)?)
    }

    /// One round: the prompt evaluated, `tokens` generated greedily. Also returns llama.cpp's own
    /// compute-only rates (prompt, decode) from `llama_perf_context`.
    pub fn generate(&mut self, prompt: &[u32], tokens: usize) -> anyhow::Result<(Round, (f64, f64))> {
        writeln!(self.stdin, "{}", serde_json::json!({ "prompt": prompt, "tokens": tokens }))?;
        let a = self.answer()?;
        let f = |v: &Value, k: &str| v[k].as_f64().ok_or_else(|| anyhow::anyhow!("peer answer lacks {k}: {a}"));
        let ids: Vec<u32> = a["ids"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect())
            .unwrap_or_default();
        let round = Round {
            prompt_tokens: f(&a, "prompt_tokens")? as usize,
            prompt_s: f(&a, "prompt_s")?,
            tokens: f(&a, "tokens")? as usize,
            decode_s: f(&a, "decode_s")?,
            ids,
        };
        let perf = &a["perf"];
        let compute = (
            f(perf, "prompt_eval_tokens")? / (f(perf, "prompt_eval_ms")? / 1e3),
            f(perf, "eval_tokens")? / (f(perf, "eval_ms")? / 1e3),
        );
        Ok((round, compute))
    }
}

impl Drop for LlamaCpp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
