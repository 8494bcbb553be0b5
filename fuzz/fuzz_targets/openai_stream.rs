//! The server-sent events of an OpenAI-compatible server (`pipelines/src/llm/openai.rs`, `SseReader`).
//!
//! Input: the first line holds the job's stop strings, separated by `|` (empty ones dropped, at most 8, as
//! the contract allows); the rest is the byte stream. Besides never panicking: the stream read in one chunk
//! and read in chunks cut at points derived from the input give the same answer, usage, finish, error and
//! piece count; the answer never contains a stop string; a stop string ends the reading at once.

#![no_main]

use ainern2d_pipelines::llm::SseReader;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Read {
    text: String,
    chunks: u64,
    usage: Option<(Option<u64>, Option<u64>)>,
    finish: String,
    ended: bool,
    error: Option<String>,
    pieces: Vec<(u64, bool)>,
}

fn read<'a>(stop: &[String], chunks: impl Iterator<Item = &'a [u8]>) -> Read {
    let mut reader = SseReader::new("http://llm.test/v1/chat/completions", stop);
    let mut pieces = Vec::new();
    let mut error = None;
    for chunk in chunks {
        match reader.feed(chunk, &mut |n, stopped| pieces.push((n, stopped))) {
            Ok(false) => {}
            Ok(true) => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    Read {
        text: reader.text,
        chunks: reader.chunks,
        usage: reader.usage,
        finish: format!("{:?}", reader.finish),
        ended: reader.ended,
        error,
        pieces,
    }
}

fuzz_target!(|data: &[u8]| {
    let (head, stream) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let stop: Vec<String> =
        String::from_utf8_lossy(head).split('|').filter(|s| !s.is_empty()).take(8).map(String::from).collect();
    let whole = read(&stop, std::iter::once(stream));

    // Cut points from the bytes themselves, so a run is reproducible from its input alone.
    let mut cuts = Vec::new();
    let mut at = 0usize;
    for &b in stream {
        at += usize::from(b % 17) + 1;
        if at >= stream.len() {
            break;
        }
        cuts.push(at);
    }
    let pieces = std::iter::once(0).chain(cuts.iter().copied()).zip(cuts.iter().copied().chain([stream.len()]));
    let chunked = read(&stop, pieces.map(|(a, b)| &stream[a..b]));
    assert_eq!(whole, chunked, "the answer depends on how the stream was cut");

    for s in &stop {
        assert!(!whole.text.contains(s.as_str()), "the answer {:?} contains the stop string {s:?}", whole.text);
    }
    assert_eq!(whole.pieces.len() as u64, whole.chunks);
    if let Some(i) = whole.pieces.iter().position(|&(_, stopped)| stopped) {
        assert_eq!(i + 1, whole.pieces.len(), "pieces after the stop string");
        assert!(whole.ended && whole.error.is_none());
    }
});
