//! `GET /view` (a `FileResponse` with single-range support, optionally slow or inflated) and
//! `POST /upload/image` (multipart, name-clash handling by content).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Query, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Shared;
use super::routes::{json_response, server_error};

/// Lexical `normpath` of a relative path; `None` when it is absolute or climbs out of its base.
fn normalize(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// `mimetypes.guess_type`, with the types ComfyUI forces to a download.
fn content_type(filename: &str) -> &'static str {
    let ext = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "wav" => "audio/x-wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "json" => "application/json",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against a length: `Ok(None)` without a usable Range header,
/// `Err(())` when it cannot be satisfied.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let parsed = match (a.trim(), b.trim()) {
        ("", n) => n.parse::<u64>().ok().map(|n| (len.saturating_sub(n), len.saturating_sub(1))),
        (a, "") => a.parse::<u64>().ok().map(|a| (a, len.saturating_sub(1))),
        (a, b) => a.parse::<u64>().ok().zip(b.parse::<u64>().ok()).map(|(a, b)| (a, b.min(len.saturating_sub(1)))),
    };
    match parsed {
        None => Ok(None),
        Some((start, end)) if start >= len || end < start => Err(()),
        Some(r) => Ok(Some(r)),
    }
}

pub(crate) async fn view(
    Extract(shared): Extract<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(raw) = q.get("filename") else { return StatusCode::NOT_FOUND.into_response() };
    // `folder_paths.annotated_filepath` cuts a fixed number of characters.
    let (name, annotated) = [("[output]", 9, "output"), ("[input]", 8, "input"), ("[temp]", 7, "temp")]
        .iter()
        .find(|(suffix, _, _)| raw.ends_with(suffix))
        .map_or((raw.as_str(), None), |(_, cut, kind)| {
            (raw.get(..raw.len().saturating_sub(*cut)).unwrap_or(""), Some(*kind))
        });
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let kind = annotated.unwrap_or_else(|| q.get("type").map_or("output", String::as_str));
    if !matches!(kind, "output" | "input" | "temp") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let subfolder = match q.get("subfolder").map(|s| normalize(s)) {
        None => String::new(),
        Some(Some(s)) => s,
        Some(None) => return StatusCode::FORBIDDEN.into_response(),
    };
    let filename = name.rsplit('/').next().unwrap_or(name).to_string();
    let (content, view) = {
        let st = shared.lock();
        let key = (kind.to_string(), subfolder, filename.clone());
        match st.files.get(&key) {
            Some(content) => (content.clone(), st.behaviour.view.clone()),
            None => return StatusCode::NOT_FOUND.into_response(),
        }
    };
    let total = view.inflate_to.unwrap_or(content.len() as u64);
    let (status, start, end) = match range(&headers, total) {
        Ok(None) => (StatusCode::OK, 0, total),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            r.headers_mut().insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{total}")).unwrap());
            return r;
        }
    };
    let mut response = Response::new(body(content, start, end, view.chunk.max(1), view.delay));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&filename)));
    if let Ok(v) = HeaderValue::from_str(&format!("filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {start}-{}/{total}", end - 1)).unwrap());
    }
    if view.content_length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    }
    response
}

/// Bytes `start..end` of the file followed by zeros up to the inflated length, in chunks with a pause
/// before each.
fn body(content: Bytes, start: u64, end: u64, chunk: usize, delay: Duration) -> Body {
    if delay.is_zero() && end <= content.len() as u64 {
        return Body::from(content.slice(start as usize..end as usize));
    }
    let stream = futures_util::stream::unfold(start, move |pos| {
        let content = content.clone();
        async move {
            if pos >= end {
                return None;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let stop = end.min(pos + chunk as u64);
            let mut piece = Vec::with_capacity((stop - pos) as usize);
            let len = content.len() as u64;
            if pos < len {
                piece.extend_from_slice(&content[pos as usize..stop.min(len) as usize]);
            }
            piece.resize((stop - pos) as usize, 0);
            Some((Ok::<_, std::io::Error>(Bytes::from(piece)), stop))
        }
    });
    Body::from_stream(stream)
}

/// `os.path.splitext`: a leading dot does not start an extension.
fn splitext(name: &str) -> (&str, &str) {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_start..].trim_start_matches('.').rfind('.') {
        Some(i) => {
            let dot = name.len() - name[base_start..].trim_start_matches('.').len() + i;
            (&name[..dot], &name[dot..])
        }
        None => (name, ""),
    }
}

pub(crate) async fn upload(Extract(shared): Extract<Arc<Shared>>, mut multipart: Multipart) -> Response {
    let (mut image, mut kind, mut subfolder, mut overwrite) = (None, None, None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return e.into_response(),
        };
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let data = match field.bytes().await {
            Ok(data) => data,
            Err(e) => return e.into_response(),
        };
        let text = || String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "image" => image = Some((filename, data.clone())),
            "type" => kind = Some(text()),
            "subfolder" => subfolder = Some(text()),
            "overwrite" => overwrite = Some(text()),
            _ => {}
        }
    }
    let Some((Some(mut filename), data)) = image else { return StatusCode::BAD_REQUEST.into_response() };
    if filename.is_empty() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let kind = kind.unwrap_or_else(|| "input".into());
    if !matches!(kind.as_str(), "input" | "temp" | "output") {
        // `get_dir_by_type` leaves its variable unset: an UnboundLocalError.
        return server_error();
    }
    let subfolder = subfolder.unwrap_or_default();
    let key_of = |filename: &str| {
        let joined = if subfolder.is_empty() { filename.to_string() } else { format!("{subfolder}/{filename}") };
        let full = normalize(&joined).filter(|f| !f.is_empty())?;
        let (dir, base) = full.rsplit_once('/').unwrap_or(("", &full));
        Some((kind.clone(), dir.to_string(), base.to_string()))
    };
    let Some(mut key) = key_of(&filename) else { return StatusCode::BAD_REQUEST.into_response() };
    let mut st = shared.lock();
    let mut duplicate = false;
    if !matches!(overwrite.as_deref(), Some("true" | "1")) {
        let (stem, ext) = splitext(&filename);
        let (stem, ext) = (stem.to_string(), ext.to_string());
        let mut i = 1;
        while let Some(existing) = st.files.get(&key) {
            if *existing == data {
                duplicate = true;
                break;
            }
            filename = format!("{stem} ({i}){ext}");
            key = key_of(&filename).expect("same folder as the first name");
            i += 1;
        }
    }
    if !duplicate {
        st.files.insert(key, data.clone());
    }
    let recorded = if subfolder.is_empty() { filename.clone() } else { format!("{subfolder}/{filename}") };
    st.record.uploads.push((recorded, data.to_vec()));
    json_response(StatusCode::OK, &json!({"name": filename, "subfolder": subfolder, "type": kind}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ranges() {
        assert_eq!(normalize("a/./b/../c"), Some("a/c".into()));
        assert_eq!(normalize("../x"), None);
        assert_eq!(splitext("photo.png"), ("photo", ".png"));
        assert_eq!(splitext(".hidden"), (".hidden", ""));
        assert_eq!(splitext("a.tar.gz"), ("a.tar", ".gz"));
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static("bytes=2-"));
        assert_eq!(range(&h, 10), Ok(Some((2, 9))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=-3"));
        assert_eq!(range(&h, 10), Ok(Some((7, 9))));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=10-"));
        assert_eq!(range(&h, 10), Err(()));
    }
}
