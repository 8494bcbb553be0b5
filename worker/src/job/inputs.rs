//! Inputs: the job's scratch directory and the fetch of every named input into it. A scratch directory
//! is removed on a blocking thread whenever it is dropped, never on the async reactor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ainern2d_contract::{ErrorCode, Job};
use ainern2d_pipelines::CancellationToken;

use super::{Failure, Stop};
use crate::Shared;

/// A job's scratch directory; dropping it removes the tree off the reactor.
pub(crate) struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    pub fn create(root: &Path, job: &Job) -> Result<Scratch, Stop> {
        let dir = tempfile::Builder::new().prefix(&format!("{}-", job.job_id)).tempdir_in(root).map_err(|e| {
            Stop::Failed(Failure::new(
                ErrorCode::Internal,
                true,
                format!("cannot create a scratch dir in {}: {e}", root.display()),
            ))
        })?;
        Ok(Scratch(Some(dir)))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("only taken in drop").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            // Removing a tree is file-system work (a 4K video's frames can be thousands of files).
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(dir))),
            Err(_) => drop(dir),
        }
    }
}

/// Fetches the inputs; a job without inputs gets its scratch directory later, on the pipeline's thread.
pub(super) async fn fetch(
    shared: &Shared,
    job: &Job,
    cancel: &CancellationToken,
) -> Result<(BTreeMap<String, PathBuf>, Option<Scratch>), Stop> {
    if job.inputs.is_empty() {
        return Ok((BTreeMap::new(), None));
    }
    let root = shared.scratch_root().to_path_buf();
    let job_owned = job.clone();
    let scratch = tokio::task::spawn_blocking(move || Scratch::create(&root, &job_owned))
        .await
        .map_err(|e| Stop::Failed(Failure::new(ErrorCode::Internal, true, format!("scratch dir task: {e}"))))??;
    let mut inputs = BTreeMap::new();
    for (name, url) in &job.inputs {
        let dest = scratch.path().join(format!("input-{name}"));
        tokio::select! {
            r = shared.fetcher.fetch(name, &url.0, &dest) => { r?; }
            _ = cancel.cancelled() => return Err(Stop::Cancelled),
        }
        inputs.insert(name.clone(), dest);
    }
    Ok((inputs, Some(scratch)))
}
