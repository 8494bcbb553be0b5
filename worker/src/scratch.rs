//! The worker's scratch space: `<scratch_dir>/w-<id>/`, one directory per process, held with an
//! exclusive lock on its `.lock` file for the life of the process. At start, a worker sweeps the
//! directories of processes that died without cleaning up (kill -9, OOM, power loss): their lock is free.
//! Several workers on one host may share `scratch_dir`; a live one's directory is never touched.

use std::fs::File;
use std::path::{Path, PathBuf};

pub struct ScratchRoot {
    dir: PathBuf,
    /// Held (locked) while the process lives.
    _lock: File,
}

const LOCK: &str = ".lock";
/// How long a directory without its lock file is taken for one whose process is still creating it.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

fn older_than(path: &Path, age: std::time::Duration) -> bool {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    modified.is_ok_and(|t| t.elapsed().is_ok_and(|e| e > age))
}

impl ScratchRoot {
    /// Creates and locks this process's directory under `root`.
    pub fn open(root: &Path) -> std::io::Result<ScratchRoot> {
        std::fs::create_dir_all(root)?;
        let dir = root.join(format!("w-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir)?;
        let lock = File::create(dir.join(LOCK))?;
        lock.try_lock().map_err(|e| std::io::Error::other(format!("locking {}: {e}", dir.display())))?;
        Ok(ScratchRoot { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes the directories of dead workers under the same root; returns how many. Blocking: call it
    /// from a blocking thread.
    pub fn sweep(&self) -> usize {
        let Some(root) = self.dir.parent() else { return 0 };
        let Ok(entries) = std::fs::read_dir(root) else { return 0 };
        let mut swept = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path == self.dir || !name.to_string_lossy().starts_with("w-") || !path.is_dir() {
                continue;
            }
            let free = match File::open(path.join(LOCK)) {
                Ok(lock) => lock.try_lock().is_ok(),
                // No lock file: a process died between creating the directory and its lock — or another
                // worker starting beside this one is between those two steps right now (removing its
                // directory there failed its start), so only a directory older than that can be is dead.
                Err(e) => e.kind() == std::io::ErrorKind::NotFound && older_than(&path, UNLOCKED_GRACE),
            };
            if free {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => swept += 1,
                    Err(e) => tracing::warn!(dir = %path.display(), "could not remove a dead worker's scratch: {e}"),
                }
            }
        }
        swept
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_dead_workers_scratch_and_spares_live_ones() {
        let root = tempfile::tempdir().unwrap();
        let live = ScratchRoot::open(root.path()).unwrap();
        let me = ScratchRoot::open(root.path()).unwrap();
        // A killed worker: its directory and files stay, its lock is released with the process.
        let dead = root.path().join("w-dead");
        std::fs::create_dir_all(dead.join("job-1-abc")).unwrap();
        std::fs::write(dead.join("job-1-abc/frame.png"), b"x").unwrap();
        File::create(dead.join(LOCK)).unwrap();
        let nolock = root.path().join("w-nolock");
        std::fs::create_dir(&nolock).unwrap();
        let old = std::time::SystemTime::now() - UNLOCKED_GRACE * 2;
        File::open(&nolock).unwrap().set_modified(old).unwrap();
        std::fs::write(root.path().join("unrelated"), b"keep").unwrap();
        assert_eq!(me.sweep(), 2);
        assert!(!dead.exists() && !nolock.exists());
        assert!(live.path().exists() && me.path().exists() && root.path().join("unrelated").exists());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "a worker removes its own scratch when it stops");
    }

    /// Two workers starting at once on one root: the second one's sweep ran between the first one's
    /// directory and its lock file, removed the directory, and the first failed to start ("cannot create
    /// scratch_dir … No such file or directory", seen in CI).
    #[test]
    fn a_directory_still_being_created_is_not_swept() {
        let root = tempfile::tempdir().unwrap();
        let me = ScratchRoot::open(root.path()).unwrap();
        let starting = root.path().join("w-starting");
        std::fs::create_dir(&starting).unwrap();
        assert_eq!(me.sweep(), 0);
        assert!(starting.exists(), "a worker between its directory and its lock lost its directory");
    }
}
