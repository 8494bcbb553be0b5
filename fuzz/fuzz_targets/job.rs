//! A job message body through the worker's first stage (`worker/src/job/receive.rs`): `parse_job`, then the
//! output bucket against the worker's allowlist. Never panics; a job it accepts serialises, and the
//! serialised job parses back to the same job (the hub, the outbox relay and retries republish jobs).

#![no_main]

use ainern2d_contract::{Job, parse_job};
use ainern2d_worker::config::StoreConfig;
use ainern2d_worker::store::check_output_bucket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let parsed = parse_job(body);
    // The `Deserialize` impl (used where a job is embedded in another message) agrees with `parse_job`.
    let via_serde = serde_json::from_slice::<Job>(body);
    assert_eq!(parsed.is_ok(), via_serde.is_ok(), "parse_job: {parsed:?}, Deserialize: {via_serde:?}");
    let job = match parsed {
        Ok(job) => job,
        Err(e) => {
            // The error becomes a `failed` event's message and field.
            let _ = e.to_string();
            return;
        }
    };
    assert_eq!(&job, &via_serde.unwrap());
    let cfg = StoreConfig { bucket: "outputs".into(), allowed_buckets: vec!["tenant-a".into()], ..Default::default() };
    let _ = check_output_bucket(&cfg, job.output.bucket.as_deref());

    let bytes = serde_json::to_vec(&job).expect("an accepted job serialises");
    let again = parse_job(&bytes).unwrap_or_else(|e| {
        panic!("an accepted job, serialised, is refused: {e}\n{}", String::from_utf8_lossy(&bytes))
    });
    assert_eq!(job, again, "{}", String::from_utf8_lossy(&bytes));
});
