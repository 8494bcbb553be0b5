//! One conformance suite for every implementation of the artifact store boundary: S3 (against the real S3
//! server of the test environment) and the local directory.

use std::sync::Arc;
use std::time::Duration;

use ainern2d_tests::*;
use ainern2d_worker::config::StoreConfig;
use ainern2d_worker::job::sha256_file;
use ainern2d_worker::s3::S3Store;
use ainern2d_worker::store::{ArtifactStore, LocalStore, StoreError};

async fn read_url(url: &str) -> Vec<u8> {
    match url.strip_prefix("file://") {
        Some(path) => std::fs::read(path).unwrap(),
        None => reqwest::get(url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap().to_vec(),
    }
}

async fn conformance(store: Arc<dyn ArtifactStore>, bucket: &str) {
    let dir = tempfile::tempdir().unwrap();
    store.ensure_bucket(bucket).await.unwrap();
    store.ensure_bucket(bucket).await.unwrap(); // idempotent
    store.check(bucket).await.unwrap();

    // Small object: put, head with checksum, presigned read, download.
    let small = dir.path().join("small.json");
    std::fs::write(&small, br#"{"hello":"world"}"#).unwrap();
    let (sha, size) = sha256_file(&small).unwrap();
    assert_eq!(store.head(bucket, "p/j/small.json").await.unwrap(), None);
    store.put(bucket, "p/j/small.json", &small, "application/json", &sha).await.unwrap();
    let head = store.head(bucket, "p/j/small.json").await.unwrap().expect("stored");
    assert_eq!((head.size, head.sha256.as_deref()), (size, Some(sha.as_str())));
    assert_eq!(head.content_type.as_deref(), Some("application/json"));
    let url = store.presign_get(bucket, "p/j/small.json", Duration::from_secs(60)).await.unwrap();
    assert_eq!(read_url(&url).await, std::fs::read(&small).unwrap());

    // Overwriting the same key keeps one object (deterministic keys make redelivery idempotent).
    store.put(bucket, "p/j/small.json", &small, "application/json", &sha).await.unwrap();

    // Large object: above the multipart threshold (5 MiB parts), byte-exact round trip.
    let large = dir.path().join("large.bin");
    let bytes: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&large, &bytes).unwrap();
    let (large_sha, large_size) = sha256_file(&large).unwrap();
    store.put(bucket, "p/j/large.bin", &large, "application/octet-stream", &large_sha).await.unwrap();
    let head = store.head(bucket, "p/j/large.bin").await.unwrap().expect("stored");
    assert_eq!((head.size, head.sha256.as_deref()), (large_size, Some(large_sha.as_str())));
    let back = dir.path().join("back.bin");
    assert_eq!(store.get_to_file(bucket, "p/j/large.bin", &back, u64::MAX).await.unwrap(), large_size);
    assert_eq!(sha256_file(&back).unwrap().0, large_sha);

    // Limits and absence are distinct, non-retryable errors.
    let err = store.get_to_file(bucket, "p/j/large.bin", &back, 1024).await.unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }) && !err.is_retryable(), "{err}");
    let err = store.get_to_file(bucket, "p/j/missing", &back, u64::MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }) && !err.is_retryable(), "{err}");
}

#[tokio::test]
async fn s3_store_conformance() {
    let bucket = unique("store").to_lowercase();
    let config = StoreConfig {
        endpoint: s3_endpoint(),
        access_key_id: S3_KEY.into(),
        secret_access_key: S3_KEY.into(),
        multipart_threshold_bytes: 5 * 1024 * 1024,
        part_size_bytes: 5 * 1024 * 1024,
        ..StoreConfig::default()
    };
    conformance(Arc::new(S3Store::new(&config)), &bucket).await;
    // Multipart really happened: the ETag of a multipart object has a part count suffix.
    let client = s3().await;
    let head = client.head_object().bucket(&bucket).key("p/j/large.bin").send().await.unwrap();
    assert!(head.e_tag().unwrap_or_default().contains("-3"), "etag {:?}", head.e_tag());
    delete_bucket(&client, &bucket).await;
}

/// A cancelled job drops its upload's future mid-way: the multipart upload is aborted, not left behind.
/// s3s-fs does not list multipart uploads, so this runs against a minimal S3 endpoint that starts an
/// upload, never answers a part, and records what the store asks of it.
#[tokio::test]
async fn a_dropped_multipart_upload_is_aborted() {
    use axum::http::{Method, StatusCode, Uri};
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let record = record.clone();
        async move {
            let query = uri.query().unwrap_or_default().to_string();
            record.lock().unwrap().push(format!("{method} {query}"));
            if method == Method::GET && query.contains("uploads") {
                // Two open uploads under the prefix; only the one of exactly the recorded key is ours.
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
                    <IsTruncated>false</IsTruncated>\
                    <Upload><Key>p/intent/out.bin</Key><UploadId>up-intent</UploadId></Upload>\
                    <Upload><Key>p/intent/out.bin.other</Key><UploadId>up-other</UploadId></Upload>\
                    </ListMultipartUploadsResult>";
                return (StatusCode::OK, xml.to_string());
            }
            if method == Method::POST && query.contains("uploads") {
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
                    <Bucket>b</Bucket><Key>p/j/big.bin</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>";
                return (StatusCode::OK, xml.to_string());
            }
            if method == Method::PUT && query.contains("uploadId") {
                // A part that never finishes uploading: the job is cancelled meanwhile.
                std::future::pending::<()>().await;
            }
            (StatusCode::NO_CONTENT, String::new())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = StoreConfig {
        endpoint,
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        multipart_threshold_bytes: 5 * 1024 * 1024,
        part_size_bytes: 5 * 1024 * 1024,
        ..StoreConfig::default()
    };
    let store = S3Store::from_config(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 12 * 1024 * 1024]).unwrap();
    let mut put = Box::pin(store.put("b", "p/j/big.bin", &big, "application/octet-stream", "00"));
    let part_started = || seen.lock().unwrap().iter().any(|r| r.starts_with("PUT") && r.contains("uploadId=up-1"));
    for _ in 0..200 {
        tokio::select! {
            r = &mut put => panic!("the upload ended before it could be cancelled: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        if part_started() {
            break;
        }
    }
    assert!(part_started(), "no part upload began: {:?}", seen.lock().unwrap());
    drop(put);
    let aborted = || seen.lock().unwrap().iter().any(|r| r.starts_with("DELETE") && r.contains("uploadId=up-1"));
    for _ in 0..100 {
        if aborted() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(aborted(), "the cancelled multipart upload was not aborted: {:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn local_store_conformance() {
    let root = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalStore::new(root.path())), "outputs").await;
}

#[tokio::test]
async fn local_store_refuses_paths_that_leave_its_root() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::new(root.path());
    let file = root.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    for (bucket, key) in [("b", "../escape"), ("..", "k"), ("b", "a//b"), ("b/c", "k"), (".meta", "b/x")] {
        assert!(store.put(bucket, key, &file, "text/plain", "0").await.is_err(), "{bucket}/{key}");
    }
}

/// An S3 server whose connections stop answering (packets dropped: a partition, a wedged node) fails
/// a request within `store.request_timeout_s` — retried by the SDK, then a retryable error for the job —
/// instead of holding it for the SDK's 5-minute attempt timeout (found by the chaos rounds: a 2.5 s
/// blackhole left jobs running for minutes). The store works again once the server answers.
#[tokio::test]
async fn an_s3_server_that_stops_answering_fails_within_the_request_timeout() {
    use ainern2d_tests::chaos::proxy::{FaultProxy, Mode};
    let upstream = s3_endpoint().trim_start_matches("http://").parse().expect("an http://127.0.0.1:port endpoint");
    let proxy = FaultProxy::start(0, upstream).await;
    let bucket = unique("store-stall").to_lowercase();
    create_bucket(&s3().await, &bucket).await;
    let config = StoreConfig {
        endpoint: proxy.url(),
        access_key_id: S3_KEY.into(),
        secret_access_key: S3_KEY.into(),
        request_timeout_s: 1,
        ..StoreConfig::default()
    };
    let store = S3Store::new(&config);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.json");
    std::fs::write(&file, b"{}").unwrap();
    let (sha, _) = sha256_file(&file).unwrap();
    proxy.set_mode(Mode::Blackhole);
    let started = std::time::Instant::now();
    let err = store.put(&bucket, "p/j/out.json", &file, "application/json", &sha).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = store.head(&bucket, "p/j/out.json").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    proxy.set_mode(Mode::Pass);
    store.put(&bucket, "p/j/out.json", &file, "application/json", &sha).await.unwrap();
    assert!(store.head(&bucket, "p/j/out.json").await.unwrap().is_some());
    delete_bucket(&s3().await, &bucket).await;
}

/// A worker killed mid multipart upload leaves the upload open on the server — its parts are kept (and
/// billed) until someone aborts it, and S3 never does on its own (found by the chaos rounds: seeds
/// 0xe525d2a3b2002e14, 0x953ddf9a1edc63d8, 0x3841a405dd589bba, a worker killed while a part was on its
/// way). The S3 store records each open upload in a journal (`<scratch_dir>/uploads/`, one file per
/// upload, locked by its uploader) and `recover` aborts the ones nobody holds: what a killed process
/// left, and what a live one could not abort while S3 failed. Against a minimal S3 endpoint, because
/// s3s-fs does not list multipart uploads.
#[tokio::test]
async fn multipart_uploads_left_open_are_aborted_by_recover() {
    use ainern2d_worker::s3::journal::{Record, UploadJournal};
    use axum::http::{Method, StatusCode, Uri};
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let fail_deletes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (record, failing) = (seen.clone(), fail_deletes.clone());
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let (record, failing) = (record.clone(), failing.clone());
        async move {
            let query = uri.query().unwrap_or_default().to_string();
            record.lock().unwrap().push(format!("{method} {query}"));
            if method == Method::GET && query.contains("uploads") {
                // Two open uploads under the prefix; only the one of exactly the recorded key is ours.
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>b</Bucket>\
                    <IsTruncated>false</IsTruncated>\
                    <Upload><Key>p/intent/out.bin</Key><UploadId>up-intent</UploadId></Upload>\
                    <Upload><Key>p/intent/out.bin.other</Key><UploadId>up-other</UploadId></Upload>\
                    </ListMultipartUploadsResult>";
                return (StatusCode::OK, xml.to_string());
            }
            if method == Method::POST && query.contains("uploads") {
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
                    <Bucket>b</Bucket><Key>p/j/big.bin</Key><UploadId>up-live</UploadId></InitiateMultipartUploadResult>";
                return (StatusCode::OK, xml.to_string());
            }
            if method == Method::PUT && query.contains("uploadId") {
                std::future::pending::<()>().await;
            }
            if method == Method::DELETE && failing.load(std::sync::atomic::Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, String::new());
            }
            (StatusCode::NO_CONTENT, String::new())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("uploads");
    let config = StoreConfig {
        endpoint,
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        multipart_threshold_bytes: 5 * 1024 * 1024,
        part_size_bytes: 5 * 1024 * 1024,
        request_timeout_s: 2,
        ..StoreConfig::default()
    };
    let store = S3Store::from_config(&config).unwrap().with_upload_journal(journal_dir.clone());
    let deletes = |id: &str| seen.lock().unwrap().iter().filter(|r| r.starts_with("DELETE") && r.contains(id)).count();
    let records = || std::fs::read_dir(&journal_dir).map(|d| d.count()).unwrap_or(0);

    // What a killed process leaves: a record nobody holds (the kernel dropped its lock). One that a live
    // process holds is left alone.
    let journal = UploadJournal::new(&journal_dir);
    let record = |id: &str| Record { bucket: "b".into(), key: format!("p/{id}/out.bin"), upload_id: Some(id.into()) };
    drop(journal.open(&record("up-dead")).unwrap());
    let held = journal.open(&record("up-held")).unwrap();
    assert_eq!(store.recover().await, 1);
    assert_eq!((deletes("uploadId=up-dead"), deletes("uploadId=up-held")), (1, 0));
    assert_eq!(records(), 1, "only the held record is left");
    held.remove();
    // A process that died after asking for an upload and before the answer with its id: the record has
    // no id, and the upload is looked up by its key.
    drop(journal.open(&Record { upload_id: None, ..record("intent") }).unwrap());
    assert_eq!(store.recover().await, 1);
    assert_eq!((deletes("uploadId=up-intent"), deletes("uploadId=up-other")), (1, 0));
    assert_eq!(records(), 0);

    // A real upload records itself while it is open; cancelled while S3 refuses the abort, its record
    // stays for the next recover, which aborts it.
    fail_deletes.store(true, std::sync::atomic::Ordering::SeqCst);
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 12 * 1024 * 1024]).unwrap();
    let mut put = Box::pin(store.put("b", "p/j/big.bin", &big, "application/octet-stream", "00"));
    for _ in 0..200 {
        tokio::select! {
            r = &mut put => panic!("the upload ended before it could be cancelled: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        if records() == 1 {
            break;
        }
    }
    assert_eq!(records(), 1, "the open upload is not in the journal");
    assert_eq!(store.recover().await, 0, "a live upload is not aborted");
    drop(put);
    // The SDK tries the refused abort 3 times; then the record is left, unlocked, and aborted by the next
    // recover once S3 answers again.
    for _ in 0..1000 {
        if deletes("uploadId=up-live") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deletes("uploadId=up-live"), 3, "{:?}", seen.lock().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    fail_deletes.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut aborted = 0;
    for _ in 0..100 {
        assert_eq!(records(), 1, "a failed abort keeps the record");
        aborted = store.recover().await;
        if aborted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((aborted, records()), (1, 0));
}

/// s3s-fs does not list multipart uploads: a record without an upload id (its process died before the
/// answer to the creation) cannot be resolved there; the reaper says so and drops it rather than trying
/// for ever.
#[tokio::test]
async fn a_record_without_an_upload_id_is_dropped_where_uploads_cannot_be_listed() {
    use ainern2d_worker::s3::journal::{Record, UploadJournal};
    let bucket = unique("store-intent").to_lowercase();
    create_bucket(&s3().await, &bucket).await;
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        endpoint: s3_endpoint(),
        access_key_id: S3_KEY.into(),
        secret_access_key: S3_KEY.into(),
        ..StoreConfig::default()
    };
    let store = S3Store::new(&config).with_upload_journal(dir.path().join("uploads"));
    let journal = UploadJournal::new(dir.path().join("uploads"));
    drop(journal.open(&Record { bucket: bucket.clone(), key: "p/j/out.bin".into(), upload_id: None }).unwrap());
    assert_eq!(store.recover().await, 0);
    assert!(journal.orphans().is_empty(), "the record is dropped");
    delete_bucket(&s3().await, &bucket).await;
}
