//! Row 4: uploading to the same S3 server — one large object, and many small ones — with the worker's
//! uploader (`store::put_all` over `S3Store`, as a job's outputs are stored: multipart above
//! `store.multipart_threshold_bytes`, `store.upload_concurrency` objects and `store.part_concurrency`
//! parts at a time) against `s5cmd cp` and `aws s3 cp` (awscli). Every contender uploads the same files
//! to keys of its own, in alternation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ainern2d_worker::config::{Secret, StoreConfig};
use ainern2d_worker::s3::S3Store;
use ainern2d_worker::store::{self, ArtifactStore, Upload};

use crate::Ctx;
use crate::peers::{self, Peers};
use crate::report::{Check, Row};

struct Files {
    big: PathBuf,
    big_sha: String,
    small_dir: PathBuf,
    small: Vec<(PathBuf, String)>,
}

fn write_files(dir: &Path, big_mib: usize, small_n: usize) -> anyhow::Result<Files> {
    // Not compressible, not all alike: a simple generator is enough (nothing in the path compresses).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
    };
    let big = dir.join("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big)?);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..big_mib {
            fill(&mut buf);
            f.write_all(&buf)?;
        }
    }
    let small_dir = dir.join("small");
    std::fs::create_dir(&small_dir)?;
    let mut small = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..small_n {
        fill(&mut buf);
        let p = small_dir.join(format!("part-{i:05}.bin"));
        std::fs::write(&p, &buf)?;
        let sha = ainern2d_worker::job::sha256_file(&p)?.0;
        small.push((p, sha));
    }
    let big_sha = ainern2d_worker::job::sha256_file(&big)?.0;
    Ok(Files { big, big_sha, small_dir, small })
}

/// The worker's store at its defaults, on the benchmark's server.
fn config(ctx: &Ctx, bucket: &str) -> StoreConfig {
    StoreConfig {
        bucket: bucket.into(),
        endpoint: ctx.s3.clone(),
        access_key_id: ctx.s3_key.clone(),
        secret_access_key: Secret::from(ctx.s3_key.clone()),
        ..StoreConfig::default()
    }
}

fn peer(ctx: &Ctx, program: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("AWS_ACCESS_KEY_ID", &ctx.s3_key)
        .env("AWS_SECRET_ACCESS_KEY", &ctx.s3_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

pub async fn run(ctx: &Ctx, peers: &Peers) -> anyhow::Result<Row> {
    let mut row = Row::new(
        4,
        "S3 upload to the same server: the worker's uploader vs `s5cmd` and `aws s3 cp`",
        "≥ 1.0× s5cmd on both; ≥ 3× aws-cli on the small objects",
    );
    let (big_mib, small_n) = if ctx.quick { (32, 100) } else { (256, 1000) };
    let dir = tempfile::tempdir()?;
    let files = write_files(dir.path(), big_mib, small_n)?;
    let bucket = format!("bench-s3-{}", std::process::id());
    let cfg = config(ctx, &bucket);
    let ours = S3Store::from_config(&cfg)?;
    ours.ensure_bucket(&bucket).await?;
    let s5 = |args: &[&str]| {
        let mut c = peer(ctx, peers.bin("s5cmd"));
        c.args(["--endpoint-url", &ctx.s3]).args(args);
        c
    };
    let aws = |args: &[&str]| {
        let mut c = peer(ctx, peers.bin("aws"));
        c.args(["--endpoint-url", &ctx.s3, "s3"]).args(args).arg("--only-show-errors");
        c
    };
    let big = files.big.display().to_string();
    let small_glob = format!("{}/*", files.small_dir.display());
    let small_dir = files.small_dir.display().to_string();
    let mut t: [Vec<f64>; 6] = Default::default();
    for round in 0..ctx.rounds {
        let order: Vec<usize> = if round % 2 == 0 { (0..3).collect() } else { (0..3).rev().collect() };
        for &which in &order {
            // One large object.
            t[which].push(match which {
                0 => {
                    let started = Instant::now();
                    ours.put(&bucket, "ours/big.bin", &files.big, "application/octet-stream", &files.big_sha).await?;
                    started.elapsed().as_secs_f64()
                }
                1 => peers::timed(&mut s5(&["cp", &big, &format!("s3://{bucket}/s5cmd/big.bin")]))?,
                _ => peers::timed(&mut aws(&["cp", &big, &format!("s3://{bucket}/aws/big.bin")]))?,
            });
        }
        for &which in &order {
            // Many small objects.
            t[3 + which].push(match which {
                0 => {
                    let uploads: Vec<Upload> = files
                        .small
                        .iter()
                        .enumerate()
                        .map(|(i, (path, sha))| Upload {
                            bucket: &bucket,
                            key: format!("ours/small/part-{i:05}.bin"),
                            file: path,
                            content_type: "application/octet-stream",
                            sha256: sha,
                        })
                        .collect();
                    let started = Instant::now();
                    store::put_all(&ours, &uploads, cfg.upload_concurrency).await?;
                    started.elapsed().as_secs_f64()
                }
                1 => peers::timed(&mut s5(&["cp", &small_glob, &format!("s3://{bucket}/s5cmd/small/")]))?,
                _ => peers::timed(&mut aws(&["cp", "--recursive", &small_dir, &format!("s3://{bucket}/aws/small/")]))?,
            });
        }
    }
    row.conditions
        .push(format!("{big_mib} MiB in one object; {small_n} × 64 KiB objects; S3 server {} on this host", ctx.s3));
    row.conditions.push(format!(
        "worker: multipart above {} MiB in {} MiB parts, {} parts and {} objects at a time; s5cmd {} and {} \
         at their defaults",
        cfg.multipart_threshold_bytes >> 20,
        cfg.part_size_bytes >> 20,
        cfg.part_concurrency,
        cfg.upload_concurrency,
        peers.version("s5cmd", &["version"]),
        peers.version("aws", &["--version"])
    ));
    let ours_big = row.measure("worker uploader, large", "s", true, &t[0]);
    let s5_big = row.measure("s5cmd cp, large", "s", false, &t[1]);
    let aws_big = row.measure("aws s3 cp, large", "s", false, &t[2]);
    let ours_small = row.measure("worker uploader, small", "s", true, &t[3]);
    let s5_small = row.measure("s5cmd cp, small", "s", false, &t[4]);
    let aws_small = row.measure("aws s3 cp --recursive, small", "s", false, &t[5]);
    row.checks.push(Check::at_least("large: speed vs s5cmd (×)", s5_big / ours_big, 1.0));
    row.checks.push(Check::at_least("small: speed vs s5cmd (×)", s5_small / ours_small, 1.0));
    row.checks.push(Check::at_least("small: speed vs aws-cli (×)", aws_small / ours_small, 3.0));
    row.notes.push(format!(
        "Large: aws-cli takes {:.2}× the worker's time. Speeds are ratios of median times (peer ÷ ours).",
        aws_big / ours_big
    ));
    row.notes.push(
        "Before `store.upload_concurrency` (the same harness, the same day) the worker stored a job's \
         objects one after the other: 0.68-0.79x s5cmd and 1.8-2.1x aws-cli on the small objects. With \
         `store.part_concurrency = 4` the large object went at 1.27x s5cmd; the default is 1 (one part after \
         the other) until a chaos round that left an unfinished upload behind with 4 is understood. s5cmd \
         runs 256 workers and 5 parts at a time by default."
            .into(),
    );
    // Leave nothing behind on the shared server.
    let _ = peers::timed(&mut s5(&["rm", &format!("s3://{bucket}/*")]));
    let _ = peers::timed(&mut s5(&["rb", &format!("s3://{bucket}")]));
    Ok(row)
}
