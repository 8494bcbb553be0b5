//! Object keys and input references: what `contract` lets a job name (`output.prefix`, `job_id`, an input
//! URL, `output.bucket`) and what the local store makes of a key (`worker/src/store.rs`).
//!
//! Input: text lines — an output prefix, a job id, an input reference, an output bucket — put into a
//! `video` job. For an accepted job: every output key is `<prefix>/<job_id>/<name>`, relative, without empty,
//! `.` or `..` segments, within S3's 1024 bytes, and the local store accepts it (a job the contract accepts
//! must not fail at upload on its key); an accepted relative input stays below its base; an accepted
//! `s3://` input names a valid bucket and a key. Independently of the contract, any bucket and key the local
//! store accepts resolve below its root, outside its metadata tree.

#![no_main]

use std::path::{Component, Path};

use ainern2d_contract::{JobSpec, parse_job};
use ainern2d_worker::store::LocalStore;
use libfuzzer_sys::fuzz_target;

/// Every output name a pipeline writes.
const NAMES: &[&str] =
    &["video.mp4", "thumbnail.jpg", "completion.json", "audio.wav", "audio.opus", "audio.m4a", "audio.mp3"];

const ROOT: &str = "/srv/ainern2d-store";

fn below(path: &Path, base: &Path) -> bool {
    path.strip_prefix(base).is_ok_and(|rest| {
        rest.components().next().is_some() && rest.components().all(|c| matches!(c, Component::Normal(_)))
    })
}

fn check_store(bucket: &str, key: &str) {
    if let Ok(path) = LocalStore::new(ROOT).path(bucket, key) {
        assert!(below(&path, Path::new(ROOT)), "{bucket}/{key}: {} leaves the root", path.display());
        assert!(!path.starts_with(Path::new(ROOT).join(".meta")), "{bucket}/{key}: in the metadata tree");
        assert!(!bucket.is_empty() && !key.is_empty(), "{bucket:?}/{key:?} accepted");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let prefix = lines.next().unwrap_or("");
    let job_id = lines.next().unwrap_or("");
    let input = lines.next();
    let bucket = lines.next();
    check_store(bucket.unwrap_or("outputs"), prefix);

    let mut job = serde_json::json!({
        "schema": "ainern2d.job.v1",
        "job_id": job_id,
        "kind": "video",
        "params": {"width": 64, "height": 48, "duration_s": 1.0},
        "output": {"prefix": prefix},
    });
    if let Some(input) = input {
        job["inputs"] = serde_json::json!({ "image": input });
    }
    if let Some(bucket) = bucket {
        job["output"]["bucket"] = bucket.into();
    }
    let Ok(job) = parse_job(&serde_json::to_vec(&job).unwrap()) else { return };
    assert!(matches!(job.spec, JobSpec::Video(_)));
    let bucket = job.output.bucket.as_deref().unwrap_or("outputs");
    for name in NAMES {
        let key = job.output_key(name);
        assert_eq!(key, format!("{prefix}/{job_id}/{name}"));
        assert!(key.len() <= 1024, "{key}: longer than an S3 key may be");
        assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{key}: an empty, `.` or `..` segment");
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)), "{key}: unsafe characters");
        let path = LocalStore::new(ROOT).path(bucket, &key);
        let path = path.unwrap_or_else(|e| panic!("the local store refuses the key of a valid job: {e}"));
        assert!(below(&path, &Path::new(ROOT).join(bucket)), "{key}: {} leaves the bucket", path.display());
    }
    if let Some(url) = job.inputs.get("image").map(|i| i.0.as_str()) {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').expect("an accepted s3:// input has a key");
            assert!((3..=63).contains(&bucket.len()) && !key.is_empty(), "{url}");
            assert!(
                bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b)),
                "{url}"
            );
        } else if !url.starts_with("https://") && !url.starts_with("http://") {
            // A relative path, read by `exec` below its base directory.
            assert!(!url.contains(':'), "{url}");
            let base = Path::new("/work/exec");
            assert!(below(&base.join(url), base), "{url}: leaves the base directory");
        }
    }
});
