//! Upload: every artifact to `<bucket>/<prefix>/<job_id>/<name>` (deterministic keys, so a rerun
//! overwrites rather than duplicates, and the replay check knows where to look), `store.upload_concurrency`
//! at a time, then a presigned GET URL each. A cancel stops the uploads at once (the S3 store aborts an
//! unfinished multipart upload when its future is dropped).

use std::time::Duration;

use ainern2d_contract::{ErrorCode, Job, OutputObject};
use ainern2d_pipelines::CancellationToken;

use super::infer::Hashed;
use super::{Failure, Stop};
use crate::Shared;
use crate::metrics::Metrics;
use crate::store::{self, Upload};

pub(super) fn bucket_of<'a>(shared: &'a Shared, job: &'a Job) -> &'a str {
    job.output.bucket.as_deref().unwrap_or(&shared.config.store.bucket)
}

pub(super) async fn put_all(
    shared: &Shared,
    job: &Job,
    artifacts: &[Hashed],
    cancel: &CancellationToken,
) -> Result<Vec<OutputObject>, Stop> {
    let bucket = bucket_of(shared, job);
    let uploads: Vec<Upload> = artifacts
        .iter()
        .map(|Hashed { artifact, sha256, .. }| Upload {
            bucket,
            key: job.output_key(&artifact.name),
            file: &artifact.path,
            content_type: &artifact.content_type,
            sha256,
        })
        .collect();
    let put = async {
        if shared.config.mock.upload_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(shared.config.mock.upload_delay_ms)).await;
        }
        store::put_all(shared.store.as_ref(), &uploads, shared.config.store.upload_concurrency).await
    };
    tokio::select! {
        r = put => r.map_err(|e| Stop::Failed(Failure::new(ErrorCode::UploadFailed, e.is_retryable(), e.to_string())))?,
        _ = cancel.cancelled() => return Err(Stop::Cancelled),
    }
    let mut outputs = Vec::with_capacity(artifacts.len());
    for (Hashed { artifact, sha256, size }, Upload { key, .. }) in artifacts.iter().zip(uploads) {
        shared.metrics.upload_bytes.get_or_create(&Metrics::kind(job.kind().as_str())).inc_by(*size);
        let presigned_url =
            shared.store.presign_get(bucket, &key, Duration::from_secs(shared.config.store.presign_ttl_s)).await.ok();
        outputs.push(OutputObject {
            name: artifact.name.clone(),
            bucket: bucket.to_string(),
            key,
            size: *size,
            sha256: sha256.clone(),
            content_type: artifact.content_type.clone(),
            presigned_url,
        });
    }
    Ok(outputs)
}
