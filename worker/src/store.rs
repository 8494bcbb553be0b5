//! The artifact store boundary: S3 (any S3 API: MinIO, AWS, s3s) in production, a local directory for the
//! one-command local mode. The same conformance suite runs against both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::config::StoreConfig;

/// What the store knows about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub size: u64,
    /// The SHA-256 recorded when the object was written (metadata `sha256`).
    pub sha256: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object s3://{bucket}/{key} does not exist")]
    NotFound { bucket: String, key: String },
    #[error("object s3://{bucket}/{key} is {size} bytes, above the limit of {limit}")]
    TooLarge { bucket: String, key: String, size: u64, limit: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Rejected(String),
}

impl StoreError {
    /// Unavailability is worth a retry; a missing or oversized object is not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Whether a job may write its outputs to `bucket` (its `output.bucket`; `None`: `store.bucket`). The
/// error is the message of an `invalid_field` error on `output.bucket`.
pub fn check_output_bucket(cfg: &StoreConfig, bucket: Option<&str>) -> Result<(), String> {
    match bucket {
        None => Ok(()),
        Some(b) if b == cfg.bucket || cfg.allowed_buckets.iter().any(|a| a == b) => Ok(()),
        Some(b) => Err(format!(
            "bucket `{b}` is not an output bucket of this worker (store.bucket or store.allowed_buckets); leave \
             output.bucket out to use `{}`, or ask the operator to add `{b}` to store.allowed_buckets",
            cfg.bucket
        )),
    }
}

/// One object for [`put_all`].
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub bucket: &'a str,
    pub key: String,
    pub file: &'a Path,
    pub content_type: &'a str,
    pub sha256: &'a str,
}

/// Stores every upload, up to `concurrency` at a time (`store.upload_concurrency`), in any order. The first
/// failure ends the others: they are dropped, and an unfinished S3 multipart upload aborts when dropped.
pub async fn put_all(store: &dyn ArtifactStore, uploads: &[Upload<'_>], concurrency: u32) -> Result<(), StoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Collected first: a stream over a borrowing closure would make callers' futures not `Send`.
    let puts: Vec<_> = uploads.iter().map(|u| store.put(u.bucket, &u.key, u.file, u.content_type, u.sha256)).collect();
    futures_util::stream::iter(puts)
        .buffer_unordered(concurrency.max(1) as usize)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Stores the file at `bucket/key`, atomically (readers see all of it or nothing).
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        file: &Path,
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StoreError>;
    /// The object's metadata, `None` when it does not exist.
    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError>;
    /// A time-limited URL to read the object.
    async fn presign_get(&self, bucket: &str, key: &str, ttl: Duration) -> Result<String, StoreError>;
    /// Downloads `bucket/key` into `dest`, refusing objects larger than `max_bytes`. Returns the size.
    async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path, max_bytes: u64) -> Result<u64, StoreError>;
    /// Creates the bucket when it does not exist.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError>;
    /// Readiness probe.
    async fn check(&self, bucket: &str) -> Result<(), StoreError>;
    /// Cleans up what a dead process left unfinished in the store (S3: aborts the multipart uploads it
    /// left open); returns how many. The daemon calls it at start, every 30 s and before it exits.
    async fn recover(&self) -> usize {
        0
    }
}

/// A directory tree: `<root>/<bucket>/<key>`, with metadata in `<root>/.meta/<bucket>/<key>.json`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    /// Where `bucket/key` lives, or a refusal for a path that would leave the root. Public (hidden) for the
    /// `keys` fuzz target.
    #[doc(hidden)]
    pub fn path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        // Keys come from validated jobs, but the store is a boundary: never let a key leave the root.
        let safe = |s: &str| !s.is_empty() && s.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..");
        // The metadata tree is `<root>/.meta`, reached through the bucket only; below a bucket `.meta` is an
        // ordinary name, and one a job's prefix may hold.
        if !safe(bucket) || bucket.contains('/') || bucket.starts_with(".meta") || !safe(key) {
            return Err(StoreError::Rejected(format!("refusing unsafe object path {bucket}/{key}")));
        }
        Ok(self.root.join(bucket).join(key))
    }

    fn meta_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(".meta").join(bucket).join(format!("{key}.json"))
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("local store: {e}"))
}

#[async_trait]
impl ArtifactStore for LocalStore {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        file: &Path,
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StoreError> {
        let dest = self.path(bucket, key)?;
        let meta = self.meta_path(bucket, key);
        let (file, sha256, content_type) = (file.to_path_buf(), sha256.to_string(), content_type.to_string());
        // One blocking call for the whole sequence: a hard link (or a copy across file systems) to a temporary
        // name, the metadata (itself renamed into place), then an atomic rename. The metadata records the
        // size it describes: a crash between the two renames leaves a checksum that `head` does not trust.
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for dir in [dest.parent(), meta.parent()].into_iter().flatten() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = dest.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
            if std::fs::hard_link(&file, &tmp).is_err() {
                std::fs::copy(&file, &tmp)?;
            }
            let size = std::fs::metadata(&tmp)?.len();
            let doc = serde_json::json!({"sha256": sha256, "content_type": content_type, "size": size});
            let meta_tmp = meta.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
            std::fs::write(&meta_tmp, doc.to_string())?;
            std::fs::rename(&meta_tmp, &meta)?;
            std::fs::rename(&tmp, &dest)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("local store: {e}")))?
        .map_err(io)
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        let path = self.path(bucket, key)?;
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let meta: serde_json::Value = tokio::fs::read(self.meta_path(bucket, key))
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // The checksum describes the bytes only if it was written for an object of this size.
        let describes = meta["size"].as_u64() == Some(size);
        Ok(Some(StoredObject {
            size,
            sha256: meta["sha256"].as_str().filter(|_| describes).map(str::to_owned),
            content_type: meta["content_type"].as_str().map(str::to_owned),
        }))
    }

    async fn presign_get(&self, bucket: &str, key: &str, _ttl: Duration) -> Result<String, StoreError> {
        let path = self.path(bucket, key)?;
        let abs = std::path::absolute(&path).map_err(io)?;
        Ok(format!("file://{}", abs.display()))
    }

    async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        let src = self.path(bucket, key)?;
        let size = match tokio::fs::metadata(&src).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { bucket: bucket.into(), key: key.into() });
            }
            Err(e) => return Err(io(e)),
        };
        if size > max_bytes {
            return Err(StoreError::TooLarge { bucket: bucket.into(), key: key.into(), size, limit: max_bytes });
        }
        tokio::fs::copy(&src, dest).await.map_err(io)
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        tokio::fs::create_dir_all(self.root.join(bucket)).await.map_err(io)
    }

    async fn check(&self, bucket: &str) -> Result<(), StoreError> {
        tokio::fs::metadata(self.root.join(bucket)).await.map(|_| ()).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The local store, its puts slowed and counted: how many ran at once, and which key fails.
    struct Slow {
        inner: LocalStore,
        now: AtomicUsize,
        most: AtomicUsize,
        fail: Option<String>,
    }

    #[async_trait]
    impl ArtifactStore for Slow {
        async fn put(&self, bucket: &str, key: &str, file: &Path, ct: &str, sha: &str) -> Result<(), StoreError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if self.fail.as_deref() == Some(key) {
                return Err(StoreError::Unavailable(format!("{key} refused")));
            }
            self.inner.put(bucket, key, file, ct, sha).await
        }
        async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
            self.inner.head(bucket, key).await
        }
        async fn presign_get(&self, bucket: &str, key: &str, ttl: Duration) -> Result<String, StoreError> {
            self.inner.presign_get(bucket, key, ttl).await
        }
        async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path, max: u64) -> Result<u64, StoreError> {
            self.inner.get_to_file(bucket, key, dest, max).await
        }
        async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
            self.inner.ensure_bucket(bucket).await
        }
        async fn check(&self, bucket: &str) -> Result<(), StoreError> {
            self.inner.check(bucket).await
        }
    }

    #[tokio::test]
    async fn put_all_stores_every_object_at_most_n_at_a_time_and_stops_at_the_first_failure() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let sha = "b".repeat(64);
        let uploads: Vec<Upload> = (0..12)
            .map(|i| Upload {
                bucket: "b",
                key: format!("k{i}"),
                file: &file,
                content_type: "text/plain",
                sha256: &sha,
            })
            .collect();
        let slow = |fail: Option<&str>| Slow {
            inner: LocalStore::new(root.path().join("s")),
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            fail: fail.map(String::from),
        };
        let store = slow(None);
        put_all(&store, &uploads, 4).await.unwrap();
        assert_eq!(store.most.load(Ordering::SeqCst), 4, "never more than 4 at once, and 4 were");
        for u in &uploads {
            assert!(store.head("b", &u.key).await.unwrap().is_some(), "{} stored", u.key);
        }
        let store = slow(Some("k5"));
        let err = put_all(&store, &uploads, 4).await.unwrap_err();
        assert!(err.to_string().contains("k5 refused"), "{err}");
        let one = slow(None);
        put_all(&one, &uploads, 1).await.unwrap();
        assert_eq!(one.most.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_local_checksum_is_trusted_only_for_the_bytes_it_was_written_for() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path());
        let file = root.path().join("out.txt");
        std::fs::write(&file, b"first run").unwrap();
        store.put("b", "p/j/out.txt", &file, "text/plain", &"a".repeat(64)).await.unwrap();
        let head = store.head("b", "p/j/out.txt").await.unwrap().unwrap();
        assert_eq!(head.sha256.as_deref(), Some("a".repeat(64).as_str()));
        // A crash between the metadata and the data rename of a rerun leaves other bytes under the old
        // checksum: the replay check must not re-announce it.
        std::fs::write(root.path().join("b/p/j/out.txt"), b"a longer second run").unwrap();
        let head = store.head("b", "p/j/out.txt").await.unwrap().unwrap();
        assert_eq!(head.sha256, None, "{head:?}");
    }

    #[test]
    fn every_key_of_a_valid_job_is_stored_locally() {
        // Found by the `keys` fuzz target: the contract allows a prefix segment starting with `.meta`, which
        // the store refused anywhere in a key, so such a job ran and then failed at upload.
        let body = br#"{"schema": "ainern2d.job.v1", "job_id": "dma", "kind": "video", "output": {"prefix": ".metaE"},
            "params": {"width": 64, "height": 48, "duration_s": 1.0}}"#;
        let job = ainern2d_contract::parse_job(body).unwrap();
        let store = LocalStore::new("/srv/store");
        let path = store.path("outputs", &job.output_key("video.mp4")).unwrap();
        assert_eq!(path, Path::new("/srv/store/outputs/.metaE/dma/video.mp4"));
        // The metadata tree is `<root>/.meta`: no bucket may lead there.
        for bucket in [".meta", ".meta-x"] {
            assert!(store.path(bucket, "k").is_err(), "{bucket}");
        }
    }

    #[test]
    fn outputs_go_only_to_allowed_buckets() {
        let cfg = StoreConfig {
            bucket: "outputs".into(),
            allowed_buckets: vec!["tenant-a".into()],
            ..StoreConfig::default()
        };
        assert!(check_output_bucket(&cfg, None).is_ok());
        assert!(check_output_bucket(&cfg, Some("outputs")).is_ok());
        assert!(check_output_bucket(&cfg, Some("tenant-a")).is_ok());
        for bad in ["models", "tenant-b", "Outputs", ""] {
            let err = check_output_bucket(&cfg, Some(bad)).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")) && err.contains("store.allowed_buckets"), "{bad}: {err}");
        }
        // By default only store.bucket.
        let cfg = StoreConfig { bucket: "outputs".into(), ..StoreConfig::default() };
        assert!(check_output_bucket(&cfg, Some("outputs")).is_ok());
        assert!(check_output_bucket(&cfg, Some("ainern2d-models")).is_err());
    }
}
