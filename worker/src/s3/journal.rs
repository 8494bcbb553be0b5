//! The journal of open multipart uploads: a file per upload in `<scratch_dir>/uploads/`, locked by the
//! process that is uploading. An open upload holds its parts on the server until it is completed or
//! aborted, and nothing else ever removes it; a process that is killed mid-upload, or that gave up
//! aborting while S3 was unreachable, leaves its file behind, unlocked. Any worker on the same scratch
//! root then aborts that upload ([`super::S3Store::recover`]: at start, every 30 s, and before it exits).
//!
//! The file is written under a temporary name, locked, then renamed, so a reaper never sees a record half
//! written or one whose writer has not locked it yet. The record is written once the server has answered
//! with the upload id: a kill in the moment between that answer and the write still leaves an upload only
//! a lifecycle rule removes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct UploadJournal {
    dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// A record and its lock, held while it is in hand.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
    _lock: File,
}

impl Entry {
    /// The upload is finished (completed or aborted): forget it.
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "could not remove an upload's journal record: {e}");
        }
    }
}

impl UploadJournal {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        UploadJournal { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records an open upload; the record stays locked for as long as the entry lives.
    pub fn open(&self, record: &Record) -> std::io::Result<Entry> {
        std::fs::create_dir_all(&self.dir)?;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let temp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(format!("{name}.json"));
        let mut file = File::create(&temp)?;
        file.try_lock().map_err(|e| std::io::Error::other(format!("locking {}: {e}", temp.display())))?;
        file.write_all(&serde_json::to_vec(record).expect("a record serialises"))?;
        std::fs::rename(&temp, &path)?;
        Ok(Entry { path, _lock: file })
    }

    /// The records no live process holds, each locked now by the caller. Blocking.
    pub fn orphans(&self) -> Vec<(Record, Entry)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(mut file) = File::options().read(true).write(true).open(&path) else { continue };
            if file.try_lock().is_err() {
                continue; // its uploader is alive
            }
            let mut body = Vec::new();
            match file.read_to_end(&mut body).map(|_| serde_json::from_slice::<Record>(&body)) {
                Ok(Ok(record)) => found.push((record, Entry { path, _lock: file })),
                _ => {
                    // Renamed into place only once written: this is not one of ours.
                    tracing::warn!(path = %path.display(), "removing an unreadable upload journal record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> Record {
        Record { bucket: "b".into(), key: format!("p/j{n}/out.bin"), upload_id: format!("up-{n}") }
    }

    #[test]
    fn only_records_nobody_holds_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path().join("uploads"));
        let live = journal.open(&record(1)).unwrap();
        let dead = journal.open(&record(2)).unwrap();
        let done = journal.open(&record(3)).unwrap();
        drop(dead); // a process that died: the lock goes with it, the record stays
        done.remove();
        let orphans = journal.orphans();
        assert_eq!(orphans.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>(), vec![record(2)]);
        // While a reaper holds it, another reaper leaves it alone.
        assert!(journal.orphans().is_empty());
        for (_, entry) in orphans {
            entry.remove();
        }
        drop(live);
        assert_eq!(journal.orphans().len(), 1, "the live record is an orphan once its holder is gone");
    }
}
