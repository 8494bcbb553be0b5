//! Copies of a job message that the worker publishes again: the dead letter, the retry copy, the lease
//! copy. A copy keeps the message's own headers only while they total at most [`MAX_COPIED_HEADERS`]
//! bytes (names and values); beyond that only ours (`x-ainern2d-*`) are kept. A content header larger
//! than the broker's `frame_max` (128 KiB by default) makes the broker close the connection — the message
//! comes back and closes it again, for ever — and text that is not UTF-8 grows up to threefold on its way
//! in (replacement characters), so a message the broker took can come out too large to publish again.

use ainern2d_queue::Message;

pub(super) const MAX_COPIED_HEADERS: usize = 32 * 1024;

/// A persistent, mandatory copy of `message`, and the size of the headers it left out (if it did).
pub(super) fn copy_of(message: &Message) -> (Message, Option<usize>) {
    let mut copy = message.clone();
    copy.persistent = true;
    copy.mandatory = true;
    let size: usize = copy.headers.iter().map(|(name, value)| name.len() + value.as_text().map_or(8, str::len)).sum();
    if size <= MAX_COPIED_HEADERS {
        return (copy, None);
    }
    copy.headers
        .retain(|name, value| name.starts_with("x-ainern2d-") && value.as_text().is_none_or(|t| t.len() <= 1024));
    (copy, Some(size))
}

/// What a reason says about headers [`copy_of`] left out.
pub(super) fn dropped_note(dropped: Option<usize>) -> String {
    dropped.map(|size| format!(" (its headers, {size} bytes, are not copied here)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use ainern2d_contract::topology::ATTEMPT_HEADER;
    use ainern2d_queue::HeaderValue;

    use super::*;

    #[test]
    fn headers_too_large_to_copy_are_left_out_but_ours() {
        let small = Message::json(&b"{}"[..]).with_header("x-tenant", HeaderValue::Text("a".into()));
        let (copy, dropped) = copy_of(&small);
        assert_eq!((copy.headers["x-tenant"].clone(), dropped), (HeaderValue::Text("a".into()), None));
        assert!(copy.persistent && copy.mandatory);
        // 48 KiB of bytes that are not UTF-8 arrive as 144 KiB of replacement characters.
        let big = small
            .with_header("x-bytes", HeaderValue::Text(String::from_utf8_lossy(&[0xff; 48 * 1024]).into_owned()))
            .with_header(ATTEMPT_HEADER, HeaderValue::Int(2));
        let (copy, dropped) = copy_of(&big);
        assert!(dropped.unwrap() > 100 * 1024);
        assert_eq!(copy.headers.keys().collect::<Vec<_>>(), [ATTEMPT_HEADER]);
        assert!(dropped_note(dropped).contains("are not copied"));
    }
}
