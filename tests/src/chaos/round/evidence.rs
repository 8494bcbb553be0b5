//! What the checker is given: the hub's rows and event log, the tap's events, every output object with
//! the hash of its bytes, the dead-letter queue, and the incomplete multipart uploads.

use super::*;
use crate::chaos::check::Uploads;

/// A `jobs` row: id, status, attempt, outputs, error.
type JobRow = (String, String, i32, Option<serde_json::Value>, Option<serde_json::Value>);

impl Round {
    pub(super) async fn evidence(&self, submitted: Vec<Submitted>) -> Evidence {
        let pool = self.pool();
        let rows: Vec<JobRow> = sqlx::query_as("SELECT job_id, status, attempt, outputs, error FROM jobs")
            .fetch_all(&pool)
            .await
            .unwrap_or_else(|e| panic!("reading the hub's jobs: {e}"));
        let rows = rows
            .into_iter()
            .map(|(id, status, attempt, outputs, error)| {
                let outputs = outputs.and_then(|o| serde_json::from_value(o).ok()).unwrap_or_default();
                let error_code = error.as_ref().and_then(|e| e["code"].as_str().map(str::to_owned));
                (id, Row { status, attempt, outputs, error_code })
            })
            .collect();
        let hub_terminal: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT event_id, job_id, status FROM job_events \
             WHERE status IN ('succeeded', 'failed', 'cancelled', 'dead_lettered')",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;

        let s3 = &self.env.s3;
        let mut objects = BTreeMap::new();
        let mut token = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix("out/")
                .set_continuation_token(token.take())
                .send()
                .await
                .unwrap();
            for key in page.contents().iter().filter_map(|o| o.key()) {
                let got = s3.get_object().bucket(&self.bucket).key(key).send().await.unwrap();
                let sha_meta = got.metadata().and_then(|m| m.get("sha256").cloned());
                let bytes = got.body.collect().await.unwrap().into_bytes();
                let sha_bytes = hex::encode(Sha256::digest(&bytes));
                objects.insert(key.to_string(), Object { sha_meta, sha_bytes });
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let multipart = self.incomplete_uploads().await;
        Evidence {
            submitted,
            rows,
            hub_terminal,
            tap: self.tap.events(),
            objects,
            dead: self.dead_letters().await,
            multipart,
            unresolved_uploads: self.figures.lock().unwrap().unresolved_uploads.clone(),
        }
    }

    /// Job ids of the messages in `<prefix>.dead` (taken off the queue).
    async fn dead_letters(&self) -> Vec<String> {
        let conn = crate::connect(&self.env.broker_url).await;
        let channel = conn.create_channel().await.unwrap();
        let mut ids = Vec::new();
        let queue = format!("{}.dead", self.prefix);
        while let Ok(Some(m)) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true }).await {
            let body: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap_or_default();
            ids.push(body["job_id"].as_str().unwrap_or("<no job_id>").to_string());
        }
        let _ = conn.close(200, "done".into()).await;
        ids
    }

    /// Incomplete multipart uploads in the round's bucket: `ListMultipartUploads`, or, where the server
    /// does not implement it (s3s-fs), the server's backing directory; `Err` says why neither worked.
    async fn incomplete_uploads(&self) -> Result<Uploads, String> {
        match self.env.s3.list_multipart_uploads().bucket(&self.bucket).send().await {
            Ok(out) => {
                let left = out
                    .uploads()
                    .iter()
                    .map(|u| (u.key().unwrap_or("?").to_string(), u.upload_id().unwrap_or("?").to_string()))
                    .collect();
                Ok(Uploads { how: "ListMultipartUploads".into(), listed: true, left })
            }
            Err(e) => {
                let dir = std::env::var("AINERN2D_TEST_S3_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| std::env::temp_dir().join("ainern2d-services/s3"));
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    return Err(format!(
                        "ListMultipartUploads failed ({}) and the S3 server's directory {} (AINERN2D_TEST_S3_DIR) \
                         cannot be read",
                        aws_sdk_s3::error::DisplayErrorContext(&e),
                        dir.display()
                    ));
                };
                // s3s-fs keeps an open upload's metadata as `.bucket-<b64 bucket>.object-<b64 key>.upload-<id>
                // .metadata.json` until it completes or is aborted.
                let mine = format!(".bucket-{}.object-", b64url(self.bucket.as_bytes()));
                let left = entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .filter_map(|n| {
                        let rest = n.strip_prefix(&mine)?.strip_suffix(".metadata.json")?;
                        let (key, id) = rest.split_once(".upload-")?;
                        let key = String::from_utf8(b64url_decode(key)?).ok()?;
                        Some((key, id.to_string()))
                    })
                    .collect();
                let how = format!("the s3s-fs directory {} (no ListMultipartUploads)", dir.display());
                Ok(Uploads { how, listed: false, left })
            }
        }
    }
}

/// Base64 with the URL-safe alphabet and no padding (how s3s-fs names its metadata files).
fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        acc = acc << 6 | ABC.iter().position(|a| *a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn b64url_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")]
        {
            assert_eq!(super::b64url(plain.as_bytes()), encoded);
            assert_eq!(super::b64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(super::b64url(b"\xfb\xff"), "-_8");
        assert_eq!(super::b64url_decode("-_8").unwrap(), b"\xfb\xff");
        assert_eq!(super::b64url_decode("b3V0L2F1ZGlvLTEvYXVkaW8ud2F2").unwrap(), b"out/audio-1/audio.wav");
    }
}
