//! The journal of open multipart uploads: a file per upload in `<scratch_dir>/uploads/`, locked by the
//! process that is uploading. An open upload holds its parts on the server until it is completed or
//! aborted, and nothing else ever removes it; a process that is killed mid-upload, or that gave up
//! aborting while S3 was unreachable, leaves its file behind, unlocked. Any worker on the same scratch
//! root then aborts that upload ([`super::S3Store::recover`]: at start, every 30 s, and before it exits).
//!
//! The record is written before the upload is created (bucket and key: the server may create it and the
//! process die before the answer with its id arrives) and again with the id once it is known; a reaper
//! that finds a record without an id looks the upload up (`ListMultipartUploads`, which s3s-fs does not
//! implement: there such an upload stays open). Each write goes to a temporary file, locked, then renamed
//! over the record, so a reaper never sees a record half written or one whose writer has not locked it.

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
    /// `None` until the server has answered the upload's creation.
    #[serde(default)]
    pub upload_id: Option<String>,
}

/// A record and its lock, held while it is in hand.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
    _lock: File,
}

/// Writes `record` to a locked temporary file in `dir` and renames it to `path`; returns the locked file.
fn write_locked(dir: &Path, path: &Path, record: &Record) -> std::io::Result<File> {
    let temp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = File::create(&temp)?;
    file.try_lock().map_err(|e| std::io::Error::other(format!("locking {}: {e}", temp.display())))?;
    file.write_all(&serde_json::to_vec(record).expect("a record serialises"))?;
    std::fs::rename(&temp, path)?;
    Ok(file)
}

impl Entry {
    /// Replaces the record (the upload's id is known now); the entry stays locked throughout.
    pub fn update(&mut self, record: &Record) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        self._lock = write_locked(dir, &self.path, record)?;
        Ok(())
    }

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
        let path = self.dir.join(format!("{}.json", uuid::Uuid::new_v4().simple()));
        let file = write_locked(&self.dir, &path, record)?;
        Ok(Entry { path, _lock: file })
    }

    /// The records no live process holds, each locked now by the caller. Blocking.
    pub fn orphans(&self) -> Vec<(Record, Entry)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(mut file) = File::options().read(true).write(true).open(&path) else { continue };
            if file.try_lock().is_err() {
                continue; // its uploader is alive
            }
            if path.extension().is_none_or(|e| e != "json") {
                // A temporary file whose writer died before the rename.
                let _ = std::fs::remove_file(&path);
                continue;
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
        Record { bucket: "b".into(), key: format!("p/j{n}/out.bin"), upload_id: Some(format!("up-{n}")) }
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

    #[test]
    fn an_updated_record_stays_locked_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path());
        let intent = Record { upload_id: None, ..record(1) };
        let mut entry = journal.open(&intent).unwrap();
        entry.update(&record(1)).unwrap();
        assert!(journal.orphans().is_empty(), "the updated record is still held");
        drop(entry);
        let found: Vec<Record> = journal.orphans().into_iter().map(|(r, _)| r).collect();
        assert_eq!(found, vec![record(1)]);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(files.len(), 1, "no temporary file is left: {files:?}");
    }

    #[test]
    fn a_temporary_file_its_writer_left_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = UploadJournal::new(dir.path());
        std::fs::write(dir.path().join(".dead.tmp"), b"{\"bucket\"").unwrap();
        let held = File::create(dir.path().join(".live.tmp")).unwrap();
        held.try_lock().unwrap();
        assert!(journal.orphans().is_empty());
        let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        left.sort();
        assert_eq!(left, vec![std::ffi::OsString::from(".live.tmp")]);
    }
}
