//! Model files on local disk. Local paths are used in place (and checked against their sha256 when the
//! manifest gives one); `s3://` files are downloaded once into `<cache_dir>/<sha256>/<file name>`,
//! verified, and renamed into place, under an exclusive file lock so two workers (or two jobs) that want
//! the same file at once download it once.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::manifest::FileRef;

/// Downloads an `s3://bucket/key` object into `dest` (the worker implements this over its S3 client).
/// Returns the number of bytes written. Errors say whether a retry may help.
pub trait Fetch: Send + Sync {
    fn fetch(&self, location: &str, dest: &Path) -> Result<u64, (String, bool)>;
}

/// Lowercase hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub struct FileCache {
    cache_dir: PathBuf,
    base_dir: PathBuf,
    fetch: Option<Arc<dyn Fetch>>,
    /// Local files already checked against their sha256 in this process (path, sha256).
    verified: Mutex<HashSet<(PathBuf, String)>>,
}

impl FileCache {
    pub fn new(cache_dir: PathBuf, base_dir: PathBuf, fetch: Option<Arc<dyn Fetch>>) -> Self {
        FileCache { cache_dir, base_dir, fetch, verified: Mutex::new(HashSet::new()) }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The local path of `file`: the file itself when local (verified when a sha256 is given), else the
    /// cached download.
    pub fn resolve(&self, file: &FileRef) -> Result<PathBuf, ModelError> {
        self.resolve_until(file, &|| false)
    }

    /// [`FileCache::resolve`] for a job: while another process or job downloads the file, `cancelled` is
    /// polled, and a cancelled job stops waiting with [`ModelError::Cancelled`].
    pub fn resolve_until(&self, file: &FileRef, cancelled: &(dyn Fn() -> bool + Sync)) -> Result<PathBuf, ModelError> {
        if file.is_s3() {
            return self.download(file, cancelled);
        }
        let path = self.base_dir.join(&file.location);
        if !path.is_file() {
            return Err(ModelError::Missing { path, hint: String::new() });
        }
        if let Some(expected) = &file.sha256 {
            let key = (path.clone(), expected.to_ascii_lowercase());
            if !self.verified.lock().expect("verified lock").contains(&key) {
                let actual = sha256_file(&path).map_err(|e| ModelError::Load {
                    name: file.location.clone(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                if actual != key.1 {
                    return Err(ModelError::ChecksumMismatch {
                        location: path.display().to_string(),
                        expected: key.1,
                        actual,
                    });
                }
                self.verified.lock().expect("verified lock").insert(key);
            }
        }
        Ok(path)
    }

    fn download(&self, file: &FileRef, cancelled: &(dyn Fn() -> bool + Sync)) -> Result<PathBuf, ModelError> {
        let location = &file.location;
        let expected = file.sha256.as_deref().map(str::to_ascii_lowercase).ok_or_else(|| ModelError::Download {
            location: location.clone(),
            message: "an s3:// model file needs a sha256 in the manifest".into(),
            retryable: false,
        })?;
        let name = location.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("model");
        let dir = self.cache_dir.join(&expected);
        let target = dir.join(name);
        if target.is_file() {
            return Ok(target);
        }
        let cache_err = |message: String| ModelError::Cache { dir: self.cache_dir.clone(), message };
        std::fs::create_dir_all(&dir).map_err(|e| cache_err(format!("cannot create {}: {e}", dir.display())))?;
        // One download per file across processes: the lock file is held while downloading, and whoever
        // gets it second finds the file in place.
        let lock_path = self.cache_dir.join(format!("{expected}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| cache_err(format!("cannot open {}: {e}", lock_path.display())))?;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if cancelled() {
                        return Err(ModelError::Cancelled { what: format!("the download of {location}") });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(cache_err(format!("cannot lock {}: {e}", lock_path.display())));
                }
            }
        }
        if target.is_file() {
            return Ok(target);
        }
        let fetch = self.fetch.as_ref().ok_or_else(|| ModelError::Download {
            location: location.clone(),
            message: "this worker has no S3 client for models".into(),
            retryable: false,
        })?;
        // Holding the lock, any partial file here is left over from a download that died: remove it.
        let prefix = format!(".{name}.part-");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let part = dir.join(format!("{prefix}{}", std::process::id()));
        let started = Instant::now();
        tracing::info!(%location, cache = %dir.display(), "downloading model file");
        let result = fetch.fetch(location, &part).map_err(|(message, retryable)| ModelError::Download {
            location: location.clone(),
            message,
            retryable,
        });
        let verified = result.and_then(|bytes| {
            let actual = sha256_file(&part).map_err(|e| cache_err(format!("cannot read {}: {e}", part.display())))?;
            if actual != expected {
                return Err(ModelError::ChecksumMismatch {
                    location: location.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
            Ok(bytes)
        });
        match verified {
            Ok(bytes) => {
                // On disk before it gets its final name, so a crash cannot leave a torn file that the
                // fast path above would trust.
                File::open(&part)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| cache_err(format!("cannot sync {}: {e}", part.display())))?;
                std::fs::rename(&part, &target)
                    .map_err(|e| cache_err(format!("cannot move the download into {}: {e}", target.display())))?;
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
                tracing::info!(%location, bytes, seconds = started.elapsed().as_secs_f64(), "model file downloaded and verified");
                Ok(target)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                Err(e)
            }
        }
        // `lock` is released when dropped here.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves objects from a map, counting downloads, slowly enough for two callers to overlap.
    struct FakeS3 {
        objects: std::collections::HashMap<String, Vec<u8>>,
        downloads: AtomicUsize,
    }

    impl Fetch for FakeS3 {
        fn fetch(&self, location: &str, dest: &Path) -> Result<u64, (String, bool)> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(100));
            let bytes = self.objects.get(location).ok_or_else(|| (format!("{location} not found"), false))?;
            std::fs::write(dest, bytes).map_err(|e| (e.to_string(), true))?;
            Ok(bytes.len() as u64)
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn fake(objects: &[(&str, &[u8])]) -> Arc<FakeS3> {
        Arc::new(FakeS3 {
            objects: objects.iter().map(|(k, v)| (k.to_string(), v.to_vec())).collect(),
            downloads: AtomicUsize::new(0),
        })
    }

    #[test]
    fn concurrent_resolves_download_once() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = fake(&[("s3://models/w.gguf", b"weights")]);
        let file = FileRef { location: "s3://models/w.gguf".into(), sha256: Some(sha(b"weights")) };
        // Two caches over one directory: two worker processes sharing a cache volume.
        let caches: Vec<_> =
            (0..2).map(|_| Arc::new(FileCache::new(dir.path().into(), dir.path().into(), Some(s3.clone())))).collect();
        let handles: Vec<_> = caches
            .iter()
            .cloned()
            .map(|c| {
                let file = file.clone();
                std::thread::spawn(move || c.resolve(&file).unwrap())
            })
            .collect();
        let paths: Vec<PathBuf> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(paths[0], paths[1]);
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"weights");
        assert_eq!(s3.downloads.load(Ordering::SeqCst), 1, "the second caller must reuse the first download");
        // And later calls do not download again.
        caches[0].resolve(&file).unwrap();
        assert_eq!(s3.downloads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn checksum_mismatch_is_an_error_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = fake(&[("s3://models/w.gguf", b"tampered")]);
        let cache = FileCache::new(dir.path().into(), dir.path().into(), Some(s3));
        let file = FileRef { location: "s3://models/w.gguf".into(), sha256: Some(sha(b"weights")) };
        let err = cache.resolve(&file).unwrap_err();
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&sha(b"tampered")), "{err}");
        assert!(!err.is_retryable());
        let leftovers: Vec<_> =
            walk(dir.path()).into_iter().filter(|p| p.extension().is_none_or(|e| e != "lock")).collect();
        assert!(leftovers.iter().all(|p| p.is_dir()), "partial files left: {leftovers:?}");
    }

    #[test]
    fn local_files_are_checked_when_a_sha256_is_given() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.gguf"), b"weights").unwrap();
        let cache = FileCache::new(dir.path().join("cache"), dir.path().into(), None);
        let good = FileRef { location: "w.gguf".into(), sha256: Some(sha(b"weights")) };
        assert_eq!(cache.resolve(&good).unwrap(), dir.path().join("w.gguf"));
        let bad = FileRef { location: "w.gguf".into(), sha256: Some(sha(b"other")) };
        assert!(matches!(cache.resolve(&bad).unwrap_err(), ModelError::ChecksumMismatch { .. }));
        let missing = FileRef { location: "nope.gguf".into(), sha256: None };
        assert!(cache.resolve(&missing).unwrap_err().to_string().contains("nope.gguf"));
    }

    #[test]
    fn a_partial_download_left_by_a_dead_process_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = fake(&[("s3://models/w.gguf", b"weights")]);
        let file = FileRef { location: "s3://models/w.gguf".into(), sha256: Some(sha(b"weights")) };
        let leftover = dir.path().join(sha(b"weights")).join(".w.gguf.part-999999");
        std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
        std::fs::write(&leftover, b"wei").unwrap();
        let cache = FileCache::new(dir.path().into(), dir.path().into(), Some(s3));
        assert_eq!(std::fs::read(cache.resolve(&file).unwrap()).unwrap(), b"weights");
        assert!(!leftover.exists());
    }

    #[test]
    fn a_cancelled_job_stops_waiting_for_another_download() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = fake(&[("s3://models/w.gguf", b"weights")]);
        let file = FileRef { location: "s3://models/w.gguf".into(), sha256: Some(sha(b"weights")) };
        // Another process holds the download lock.
        let held = File::create(dir.path().join(format!("{}.lock", sha(b"weights")))).unwrap();
        held.lock().unwrap();
        let cache = FileCache::new(dir.path().into(), dir.path().into(), Some(s3.clone()));
        let err = cache.resolve_until(&file, &|| true).unwrap_err();
        assert!(matches!(err, ModelError::Cancelled { .. }), "{err}");
        assert_eq!(s3.downloads.load(Ordering::SeqCst), 0);
        held.unlock().unwrap();
        assert!(cache.resolve_until(&file, &|| false).is_ok());
    }

    #[test]
    fn s3_without_a_client_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(dir.path().into(), dir.path().into(), None);
        let file = FileRef { location: "s3://models/w.gguf".into(), sha256: Some(sha(b"x")) };
        assert!(cache.resolve(&file).unwrap_err().to_string().contains("no S3 client"));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }
}
