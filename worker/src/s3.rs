//! The S3 implementation of the artifact store (aws-sdk-s3): MinIO in production, any S3 API in tests.
//! Credentials come from `store.access_key_id` / `store.secret_access_key`, or, when both are empty, from
//! the standard AWS chain (environment, profile, web identity, container, instance metadata); never from
//! a built-in default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;

mod credentials;
pub mod journal;

use credentials::AwsChain;
pub use credentials::{CredentialSource, credential_source};

use crate::config::StoreConfig;
use crate::store::{ArtifactStore, StoreError, StoredObject};

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
    /// What `Debug` shows: never the credentials.
    endpoint: String,
    credentials: CredentialSource,
    /// Where open multipart uploads are recorded, so a later process can abort what this one could not.
    journal: Option<Arc<journal::UploadJournal>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// The metadata key that carries the SHA-256 of an object's bytes.
const SHA_META: &str = "sha256";

impl S3Store {
    /// The store the config names, refusing to start without credentials (see [`credential_source`]).
    pub fn from_config(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let shared_files = home.is_some_and(|h| {
            let aws = h.join(".aws");
            aws.join("credentials").is_file() || aws.join("config").is_file()
        });
        let source = credential_source(cfg, |k| std::env::var(k).ok(), shared_files).map_err(StoreError::Rejected)?;
        Ok(Self::with_credentials(cfg, source))
    }

    /// The store with the configured keys, or the AWS chain when both are empty, unchecked: a store without
    /// credentials fails each request. Prefer [`S3Store::from_config`].
    pub fn new(cfg: &StoreConfig) -> Self {
        let source = if cfg.access_key_id.is_empty() && cfg.secret_access_key.is_empty() {
            CredentialSource::AwsChain
        } else {
            CredentialSource::Config
        };
        Self::with_credentials(cfg, source)
    }

    fn with_credentials(cfg: &StoreConfig, source: CredentialSource) -> Self {
        let builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()));
        let mut builder = match source {
            CredentialSource::Config => builder.credentials_provider(Credentials::new(
                &cfg.access_key_id,
                cfg.secret_access_key.expose(),
                None,
                None,
                "ainern2d-config",
            )),
            CredentialSource::AwsChain => builder.credentials_provider(AwsChain::new(&cfg.region)),
        }
        .force_path_style(cfg.force_path_style)
        // Third-party S3 servers (MinIO releases, s3s) differ in their support of the newer default
        // checksums; send and verify them only where the API requires it. Integrity is covered by the
        // SHA-256 we record ourselves.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                // A request nobody answers (a dropped connection, a wedged server) fails here, not at
                // the attempt timeout.
                .read_timeout(Duration::from_secs(cfg.request_timeout_s))
                .operation_attempt_timeout(Duration::from_secs(300))
                .build(),
        );
        if !cfg.endpoint.is_empty() {
            builder = builder.endpoint_url(&cfg.endpoint);
        }
        S3Store {
            client: Client::from_conf(builder.build()),
            multipart_threshold: cfg.multipart_threshold_bytes,
            part_size: cfg.part_size_bytes,
            part_concurrency: cfg.part_concurrency.max(1) as usize,
            endpoint: cfg.endpoint.clone(),
            credentials: source,
            journal: None,
        }
    }

    /// Records open multipart uploads in `dir` (the daemon's `<scratch_dir>/uploads`), and makes
    /// [`ArtifactStore::recover`] abort the ones a dead process left there.
    pub fn with_upload_journal(mut self, dir: PathBuf) -> Self {
        self.journal = Some(Arc::new(journal::UploadJournal::new(dir)));
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The ids of the open multipart uploads of exactly `bucket/key`. `Rejected` when the server does not
    /// list uploads (s3s-fs answers NotImplemented).
    async fn uploads_of(&self, bucket: &str, key: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(key)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| match sdk("list multipart uploads", bucket, key)(e) {
                    StoreError::Unavailable(m) if m.contains("NotImplemented") => StoreError::Rejected(m),
                    other => other,
                })?;
            ids.extend(
                page.uploads().iter().filter(|u| u.key() == Some(key)).filter_map(|u| u.upload_id().map(str::to_owned)),
            );
            if page.is_truncated() != Some(true) {
                return Ok(ids);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }

    async fn put_multipart(
        &self,
        bucket: &str,
        key: &str,
        file: &Path,
        size: u64,
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StoreError> {
        // Recorded before it exists: the server may create the upload and this process die before the
        // answer with its id arrives. What this process cannot finish or abort (it is killed, or S3 does
        // not answer) its journal record leaves to a later reaper.
        let mut record = journal::Record { bucket: bucket.into(), key: key.into(), upload_id: None };
        let mut entry = self.journal.as_ref().and_then(|j| {
            j.open(&record)
                .map_err(|e| tracing::warn!(dir = %j.dir().display(), "cannot record an open multipart upload: {e}"))
                .ok()
        });
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .metadata(SHA_META, sha256)
            .send()
            .await
            .map_err(sdk("create multipart upload", bucket, key));
        // A failed creation may still have created it (the answer was lost): the record stays for the
        // reaper to look the upload up. Only a refusal is sure to have created nothing.
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                if let (StoreError::Rejected(_), Some(entry)) = (&e, entry.take()) {
                    entry.remove();
                }
                return Err(e);
            }
        };
        let upload_id =
            created.upload_id().ok_or_else(|| StoreError::Unavailable("S3 returned no upload id".into()))?.to_string();
        record.upload_id = Some(upload_id.clone());
        if let Some(entry) = entry.as_mut()
            && let Err(e) = entry.update(&record)
        {
            tracing::warn!("cannot record the id of an open multipart upload: {e}");
        }
        // Until it completes, an upload that fails or whose future is dropped (a cancelled job) is aborted,
        // so no orphaned parts are left behind; the job is retried with a fresh upload.
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            upload_id: Some(upload_id.clone()),
            entry,
        };
        let result = async {
            use futures_util::{StreamExt, TryStreamExt};
            let ranges = (0..size.div_ceil(self.part_size)).map(|i| {
                let offset = i * self.part_size;
                (i as i32 + 1, offset, self.part_size.min(size - offset))
            });
            // `part_concurrency` parts in flight, completed in part order (`buffered` keeps it).
            let upload_id = upload_id.as_str();
            // Collected first: a stream over a borrowing closure would make callers' futures not `Send`.
            let puts: Vec<_> = ranges
                .map(|(number, offset, len)| async move {
                    let body = ByteStream::read_from()
                        .path(file)
                        .offset(offset)
                        .length(Length::Exact(len))
                        .build()
                        .await
                        .map_err(|e| StoreError::Unavailable(format!("reading {}: {e}", file.display())))?;
                    let part = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(body)
                        .send()
                        .await
                        .map_err(sdk("upload part", bucket, key))?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_owned)).build(),
                    )
                })
                .collect();
            let parts: Vec<CompletedPart> =
                futures_util::stream::iter(puts).buffered(self.part_concurrency).try_collect().await?;
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(sdk("complete multipart upload", bucket, key))?;
            Ok(())
        }
        .await;
        match &result {
            Ok(()) => {
                guard.upload_id = None;
                if let Some(entry) = guard.entry.take() {
                    entry.remove();
                }
            }
            Err(_) => guard.abort().await,
        }
        result
    }
}

/// Aborts an open upload. `Ok(true)`: aborted; `Ok(false)`: the server no longer knows it (or will never
/// let us abort it), so there is nothing left to do; `Err`: try again later.
async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) -> Result<bool, StoreError> {
    match client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await {
        Ok(_) => Ok(true),
        Err(e) => match sdk("abort multipart upload", bucket, key)(e) {
            // NoSuchUpload (done already), NoSuchBucket, AccessDenied (s3s-fs's answer to an unknown id).
            StoreError::Rejected(_) => Ok(false),
            e => Err(e),
        },
    }
}

/// Aborts a multipart upload that did not complete: at once on an error, from a task when dropped.
struct AbortOnDrop {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    /// `None` once the upload completed or was aborted.
    upload_id: Option<String>,
    /// The upload's journal record: removed once it is completed or aborted, left (unlocked) otherwise.
    entry: Option<journal::Entry>,
}

impl AbortOnDrop {
    async fn abort(&mut self) {
        if let Some(id) = self.upload_id.take() {
            finish_abort(&self.client, &self.bucket, &self.key, &id, self.entry.take()).await;
        }
    }
}

async fn finish_abort(client: &Client, bucket: &str, key: &str, upload_id: &str, entry: Option<journal::Entry>) {
    match abort_upload(client, bucket, key, upload_id).await {
        Ok(_) => {
            if let Some(entry) = entry {
                entry.remove();
            }
        }
        Err(e) => tracing::warn!(
            %bucket, %key, "could not abort an unfinished multipart upload (its journal record stays for a later try): {e}"
        ),
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.upload_id.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (client, bucket, key, entry) =
            (self.client.clone(), std::mem::take(&mut self.bucket), std::mem::take(&mut self.key), self.entry.take());
        runtime.spawn(async move { finish_abort(&client, &bucket, &key, &id, entry).await });
    }
}

fn sdk<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    what: &'static str,
    bucket: &str,
    key: &str,
) -> impl Fn(SdkError<E, R>) -> StoreError {
    let (bucket, key) = (bucket.to_string(), key.to_string());
    move |e| {
        let detail = match &e {
            SdkError::ServiceError(s) => {
                let err = s.err();
                format!("{}: {}", err.code().unwrap_or("error"), err.message().unwrap_or("no message"))
            }
            // The whole cause chain (a missing credential says so deep inside it), bounded.
            other => DisplayErrorContext(other).to_string().chars().take(600).collect(),
        };
        let retryable = match &e {
            SdkError::ServiceError(s) => {
                !matches!(s.err().code(), Some("NoSuchBucket" | "AccessDenied" | "InvalidBucketName" | "NoSuchKey"))
            }
            _ => true,
        };
        let message = format!("S3 {what} of s3://{bucket}/{key} failed: {detail}");
        if retryable { StoreError::Unavailable(message) } else { StoreError::Rejected(message) }
    }
}

#[async_trait]
impl ArtifactStore for S3Store {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        file: &Path,
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StoreError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", file.display())))?
            .len();
        if size >= self.multipart_threshold {
            return self.put_multipart(bucket, key, file, size, content_type, sha256).await;
        }
        let body = ByteStream::from_path(file)
            .await
            .map_err(|e| StoreError::Unavailable(format!("reading {}: {e}", file.display())))?;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .content_length(size as i64)
            .metadata(SHA_META, sha256)
            .body(body)
            .send()
            .await
            .map_err(sdk("put", bucket, key))?;
        Ok(())
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<Option<StoredObject>, StoreError> {
        match self.client.head_object().bucket(bucket).key(key).send().await {
            Ok(out) => Ok(Some(StoredObject {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                sha256: out.metadata().and_then(|m| m.get(SHA_META)).cloned(),
                content_type: out.content_type().map(str::to_owned),
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            // A HEAD has no body, so no error code: a refusal is known by its status alone.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 403 => Err(StoreError::Rejected(format!(
                "S3 head of s3://{bucket}/{key} failed: access denied (HTTP 403): check the credentials and the bucket's policy"
            ))),
            Err(e) => Err(sdk("head", bucket, key)(e)),
        }
    }

    async fn presign_get(&self, bucket: &str, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| StoreError::Rejected(format!("presign ttl: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(sdk("presign", bucket, key))?;
        Ok(req.uri().to_string())
    }

    async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path, max_bytes: u64) -> Result<u64, StoreError> {
        let out = match self.client.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                return Err(StoreError::NotFound { bucket: bucket.into(), key: key.into() });
            }
            Err(e) => return Err(sdk("get", bucket, key)(e)),
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        let too_large = |size| StoreError::TooLarge { bucket: bucket.into(), key: key.into(), size, limit: max_bytes };
        if declared > max_bytes {
            return Err(too_large(declared));
        }
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dest.display())))?;
        let mut body = out.body;
        let mut written = 0u64;
        while let Some(chunk) =
            body.try_next().await.map_err(|e| StoreError::Unavailable(format!("reading s3://{bucket}/{key}: {e}")))?
        {
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(too_large(written));
            }
            file.write_all(&chunk).await.map_err(|e| StoreError::Unavailable(format!("{}: {e}", dest.display())))?;
        }
        file.flush().await.map_err(|e| StoreError::Unavailable(format!("{}: {e}", dest.display())))?;
        Ok(written)
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        if self.client.head_bucket().bucket(bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e))
                if matches!(e.err().code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk("create bucket", bucket, "")(e)),
        }
    }

    async fn check(&self, bucket: &str) -> Result<(), StoreError> {
        self.client.head_bucket().bucket(bucket).send().await.map(|_| ()).map_err(sdk("head bucket", bucket, ""))
    }

    async fn recover(&self) -> usize {
        let Some(journal) = self.journal.clone() else { return 0 };
        let orphans = tokio::task::spawn_blocking(move || journal.orphans()).await.unwrap_or_default();
        let mut aborted = 0;
        for (record, entry) in orphans {
            let (bucket, key) = (record.bucket.as_str(), record.key.as_str());
            let ids = match &record.upload_id {
                Some(id) => Ok(vec![id.clone()]),
                None => self.uploads_of(bucket, key).await,
            };
            let result = match ids {
                Ok(ids) => {
                    let mut done = Ok(0);
                    for id in ids {
                        match abort_upload(&self.client, bucket, key, &id).await {
                            Ok(true) => done = done.map(|n| n + 1),
                            Ok(false) => {}
                            Err(e) => done = Err(e),
                        }
                    }
                    done
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(n) => {
                    aborted += n;
                    entry.remove();
                }
                Err(StoreError::Rejected(e)) => {
                    tracing::warn!(
                        %bucket, %key,
                        "cannot find the id of a multipart upload a dead process began (the server does not list \
                         uploads); it stays open until a lifecycle rule aborts it: {e}"
                    );
                    entry.remove();
                }
                Err(e) => tracing::warn!(
                    %bucket, %key,
                    "could not abort a multipart upload a dead process left open; trying again later: {e}"
                ),
            }
        }
        aborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: &str, secret: &str) -> StoreConfig {
        StoreConfig { access_key_id: id.into(), secret_access_key: secret.into(), ..StoreConfig::default() }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let store = S3Store::new(&keys("AKIAEXAMPLE", "s3cr3t-value"));
        for shown in [format!("{store:?}"), format!("{store:#?}"), format!("{:?}", keys("AKIA", "s3cr3t-value"))] {
            assert!(!shown.contains("s3cr3t-value"), "{shown}");
        }
    }
}
