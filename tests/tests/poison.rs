//! The poison corpus (issue 12, item 4): 1,316 malformed job messages (121 MB), generated here from a seed
//! (no external corpus), published in a seeded shuffle to one real worker (mock backend) over RabbitMQ. Each
//! must end in `<prefix>.dead` with its reason and error code headers and exactly one `failed` event carrying
//! the code its category maps to; nothing is retried, nothing stays in a job queue, the worker stays ready
//! and its resident memory bounded, and SIGTERM still ends it with exit code 0.
//!
//! Categories (see [`corpus`]): bad JSON (a valid job cut at every offset, seeded random bytes, nesting
//! 10,000 deep, non-objects, JSON extensions); bad UTF-8 (invalid sequences in strings, keys and outside
//! them, lone surrogate escapes, UTF-16); wrong `schema`; wrong types for every field of a valid job of each
//! kind (strings for numbers, arrays, objects, nulls, huge and negative numbers, structs as arrays); huge
//! fields (multi-MB text in every free-text field, a 1 MB job id, key and URL, 100,000 metadata entries,
//! 10,000 inputs; three times over); missing required fields and inputs; `..`, absolute, backslash and NUL
//! paths in output prefixes, input names and input keys; hostile input URLs; odd AMQP headers (the attempt
//! header as text, negative, huge, of every other AMQP type, thousands of headers, a huge one, one of invalid
//! UTF-8); a job of the wrong kind for its queue; and a redelivery storm.
//!
//! Hostile URLs that the contract cannot tell from good ones (`http://169.254.169.254`, `http://0x7f.1`,
//! `s3://` another bucket, a local path) fail later, at fetch time, with `input_refused`: a permanent failure
//! of a valid job, which the worker disposes of exactly like an invalid message (dead letter, then a `failed`
//! event, then the ack), so they count among the dead-letter outcomes; schemes the contract refuses
//! (`file://`, `gopher://`) are `invalid_field`.
//!
//! The redelivery storm is one bad message published 80 times, with the attempt header at every value from 1
//! to 60 and without it: the worker dead-letters an invalid message at once, so the broker never redelivers
//! it, and a storm can only come from a producer (or an upstream retry loop) repeating it. What must not
//! happen is the attempt count changing the outcome (an invalid message at attempt 60 is still
//! `invalid_field`, not `retries_exhausted`, and never retried) or a copy being lost or doubled.
//!
//! Panics: a panic in a job's task ends only that task (tokio catches it at the task boundary), so its
//! delivery would sit unsettled, dead-lettered by nobody, in a worker that looks alive. The poison worker
//! runs with `AINERN2D_ABORT_ON_PANIC=1` (`worker/src/main.rs`): a panic hook that reports the panic and then
//! aborts, so a panic on any thread ends the process with SIGABRT and the final "exit code 0" fails. A
//! `panic = "abort"` cargo profile would do the same at the price of building the worker and the 585 packages
//! of its dependency graph a second time for this one test (not measured: on the shared 2-core machine a
//! clean build of that graph takes many minutes), and of a second binary the tests must be told apart. Both
//! share one limitation: a panic caught on purpose with `catch_unwind` — candle's model loaders in
//! `pipelines/src/llm/local.rs` — ends the process too (`panic = "abort"` cannot unwind; the hook runs before
//! the unwind), which is why the switch is off by default; the poison worker runs the mock backend, where
//! nothing panics on purpose. The control [`the_abort_switch_turns_a_caught_panic_into_sigabrt`] uses exactly
//! that loader: a checkpoint missing a tensor makes candle panic; without the switch the job fails with
//! `pipeline_failed` and the worker lives on, with it the worker dies of SIGABRT — so the poison test's exit
//! code 0 is not vacuous. On top of that, the poison test fails on any `panicked at` in the worker's log.
//!
//! What it found, fixed: a type error quoting a 1 MB value became a 1 MB reason header, which the broker
//! refuses by closing the connection (`frame_too_large`): the message came back and closed it again, for
//! ever, with every delivery in flight on it (errors are cut to 1 KiB in `contract`); 48 KiB of invalid UTF-8
//! in a header came out of the queue boundary as 144 KiB and did the same (an invalid message's dead letter
//! drops its headers beyond 32 KiB, `worker/src/job/receive.rs`); an `s3://` key beyond 64 KiB made the S3
//! client panic building its request (keys of at most 1,024 bytes, URLs of at most 8 KiB); keys with `//` or
//! `a/..` were retried as S3 server errors (no empty, `.` or `..` segments, no control characters); `params`
//! or `output` given as arrays, and multi-MB system prompts, video prompts, model names, stop strings and
//! metadata ran as valid jobs (objects only; bounds on every free-text field).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use ainern2d_contract::topology::{ATTEMPT_HEADER, ERROR_CODE_HEADER, REASON_HEADER};
use ainern2d_contract::{ErrorCode, EventStatus, JOB_SCHEMA, JobKind};
use ainern2d_tests::*;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(60);
const MB: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    BadJson,
    BadUtf8,
    Schema,
    WrongType,
    Huge,
    Missing,
    Paths,
    HostileUrl,
    Headers,
    WrongKind,
    Storm,
}

impl Category {
    /// The codes a category's messages may end with (each case names its own exactly).
    fn codes(self) -> BTreeSet<&'static str> {
        use ErrorCode::*;
        let codes = match self {
            Category::BadJson | Category::BadUtf8 => vec![MalformedMessage],
            Category::Schema => vec![UnsupportedSchema, InvalidField],
            Category::HostileUrl => vec![InvalidField, InputRefused],
            Category::Paths => vec![InvalidField, InputRefused, InputUnavailable],
            _ => vec![InvalidField],
        };
        codes.into_iter().map(ErrorCode::as_str).collect()
    }
}

/// One malformed message and what the worker must make of it.
struct Case {
    category: Category,
    what: String,
    /// The queue it is published to.
    queue: JobKind,
    body: Vec<u8>,
    headers: FieldTable,
    /// The job id of its `failed` event: the body's own when it has a safe one, else one derived from the
    /// body (`invalid-<first 16 hex of its sha256>`).
    job_id: String,
    /// The attempt of the event and of the dead letter.
    attempt: u32,
    code: ErrorCode,
    /// Published first, before the memory baseline (see the test).
    warm_up: bool,
}

/// A small deterministic PRNG (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn derived_id(body: &[u8]) -> String {
    format!("invalid-{}", &sha256_hex(body)[..16])
}

/// A valid job of `kind` that sets every field it can, so that each can be broken on its own.
fn base(kind: JobKind, id: &str, bucket: &str) -> Value {
    let s3 = |key: &str| format!("s3://{bucket}/in/{key}");
    let (params, inputs) = match kind {
        JobKind::Llm => (
            json!({"prompt": "hello", "system": "be brief", "model": "tiny", "max_tokens": 16, "temperature": 0.5,
                   "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1, "seed": 1, "stop": ["\n\n"]}),
            json!({}),
        ),
        JobKind::Audio => (
            json!({"text": "hello there", "voice": "joe", "sample_rate": 16000, "duration_s": 0.5, "format": "wav",
                   "speed": 1.0, "noise_scale": 0.5, "noise_w": 0.5, "speaker": "a", "sentence_silence_s": 0.2}),
            json!({"reference": s3("ref.wav")}),
        ),
        JobKind::Video => (
            json!({"prompt": "a lighthouse", "negative_prompt": "fog", "width": 64, "height": 48, "fps": 8,
                   "duration_s": 1.0, "steps": 4, "seed": 1, "model": "m", "workflow": "w", "cfg": 7.0}),
            json!({"image": s3("still.png")}),
        ),
        JobKind::Lipsync => (
            json!({"model": "m", "face_box": [0, 0, 16, 16], "pads": [0, 10, 0, 0], "fps": 25, "smooth": true}),
            json!({"video": s3("face.mp4"), "audio": s3("line.wav")}),
        ),
    };
    json!({
        "schema": JOB_SCHEMA, "job_id": id, "kind": kind, "params": params, "inputs": inputs,
        "output": {"bucket": bucket, "prefix": "poison/out"}, "priority": 1, "idempotency_key": "k-1",
        "deadline": "2099-01-01T00:00:00Z", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "metadata": {"team": "poison"},
    })
}

/// What a field holds, for the values that are of the wrong type (or out of every range) for it.
#[derive(Clone, Copy)]
enum Class {
    /// A string; `required`: null is wrong too.
    Str {
        required: bool,
    },
    /// u8 / u32 (`u64`: a seed, where 2^32 is fine); `required`: not an `Option` (null is wrong).
    Int {
        required: bool,
        u64: bool,
    },
    /// f32 / f64, every one bounded above and excluding -1.
    Float {
        required: bool,
    },
    Bool,
    Strings,
    Quad,
    Map,
    /// A string or number value of a map (`metadata.x`, `inputs.x`).
    MapValue,
    Object {
        required: bool,
    },
    Speaker,
    Format,
    Kind,
    Time,
}

fn wrong_values(class: Class) -> Vec<Value> {
    let huge_u = || serde_json::from_str::<Value>("18446744073709551616").unwrap();
    let huge_neg = || serde_json::from_str::<Value>("-9223372036854775809").unwrap();
    let mut v = match class {
        Class::Str { .. } => {
            vec![json!(1), json!(-1), json!(1.5), json!(true), json!([]), json!({}), huge_u(), json!(["x"])]
        }
        Class::Int { u64, .. } => {
            let mut v =
                vec![json!("7"), json!(1.5), json!(-1), json!(true), json!([]), json!({}), huge_u(), huge_neg()];
            v.push(json!(1e300));
            if !u64 {
                v.push(json!(4_294_967_296u64));
            }
            v
        }
        Class::Float { .. } => vec![json!("0.5"), json!(true), json!([]), json!({}), json!(-1), json!(1e300)],
        Class::Bool => vec![json!("true"), json!(1), json!(0), json!([]), json!({})],
        Class::Strings => {
            vec![json!("stop"), json!(1), json!([1]), json!({}), json!([null]), json!([""]), json!(vec!["s"; 9])]
        }
        Class::Quad => {
            vec![
                json!("box"),
                json!(1),
                json!([1, 2, 3]),
                json!([1, 2, 3, 4, 5]),
                json!(["a", "b", "c", "d"]),
                json!({}),
                json!([-1, 0, 0, 0]),
            ]
        }
        Class::Map => vec![json!("map"), json!(1), json!([]), json!(true), Value::Null, json!(["a"])],
        Class::MapValue => vec![json!(1), json!(true), Value::Null, json!([]), json!({})],
        Class::Object { .. } => vec![json!("params"), json!(1), json!(true), json!([]), json!([[]])],
        Class::Speaker => vec![json!([]), json!({}), json!(true), json!(-1), json!(1.5)],
        Class::Format => vec![json!("flac"), json!("WAV"), json!(1), Value::Null, json!([])],
        Class::Kind => {
            vec![json!(1), Value::Null, json!([]), json!({}), json!(true), json!("LLM"), json!("image"), json!("")]
        }
        Class::Time => vec![
            json!(1),
            json!(true),
            json!([]),
            json!({}),
            json!("yesterday"),
            json!("2099-13-01T00:00:00Z"),
            json!("2099-01-01"),
        ],
    };
    if matches!(
        class,
        Class::Str { required: true }
            | Class::Int { required: true, .. }
            | Class::Float { required: true }
            | Class::Object { required: true }
    ) {
        v.push(Value::Null);
    }
    v
}

/// Every field of [`base`] of `kind` by JSON pointer, with its class.
fn fields(kind: JobKind) -> Vec<(String, Class)> {
    use Class::*;
    let opt_str = Str { required: false };
    let top: Vec<(&str, Class)> = vec![
        ("/job_id", Str { required: true }),
        ("/kind", Kind),
        ("/params", Object { required: kind != JobKind::Lipsync }),
        ("/inputs", Map),
        ("/output", Object { required: true }),
        ("/output/prefix", Str { required: true }),
        ("/output/bucket", opt_str),
        ("/priority", Int { required: true, u64: false }),
        ("/idempotency_key", opt_str),
        ("/deadline", Time),
        ("/traceparent", opt_str),
        ("/metadata", Map),
        ("/metadata/team", MapValue),
    ];
    let params: Vec<(&str, Class)> = match kind {
        JobKind::Llm => vec![
            ("prompt", Str { required: true }),
            ("system", opt_str),
            ("model", opt_str),
            ("max_tokens", Int { required: true, u64: false }),
            ("temperature", Float { required: true }),
            ("top_p", Float { required: true }),
            ("top_k", Int { required: false, u64: false }),
            ("repetition_penalty", Float { required: true }),
            ("seed", Int { required: false, u64: true }),
            ("stop", Strings),
        ],
        JobKind::Audio => vec![
            ("text", Str { required: true }),
            ("voice", opt_str),
            ("sample_rate", Int { required: false, u64: false }),
            ("duration_s", Float { required: false }),
            ("format", Format),
            ("speed", Float { required: false }),
            ("noise_scale", Float { required: false }),
            ("noise_w", Float { required: false }),
            ("speaker", Speaker),
            ("sentence_silence_s", Float { required: false }),
        ],
        JobKind::Video => vec![
            ("prompt", opt_str),
            ("negative_prompt", opt_str),
            ("width", Int { required: true, u64: false }),
            ("height", Int { required: true, u64: false }),
            ("fps", Int { required: true, u64: false }),
            ("duration_s", Float { required: true }),
            ("steps", Int { required: true, u64: false }),
            ("seed", Int { required: false, u64: true }),
            ("model", opt_str),
            ("workflow", opt_str),
            ("cfg", Float { required: false }),
        ],
        JobKind::Lipsync => vec![
            ("model", opt_str),
            ("face_box", Quad),
            ("pads", Quad),
            ("fps", Int { required: false, u64: false }),
            ("smooth", Bool),
        ],
    };
    let inputs: Vec<&str> = kind.inputs().iter().map(|(name, _)| *name).collect();
    let mut out: Vec<(String, Class)> = top.into_iter().map(|(p, c)| (p.to_string(), c)).collect();
    out.extend(params.into_iter().map(|(p, c)| (format!("/params/{p}"), c)));
    out.extend(inputs.into_iter().map(|name| (format!("/inputs/{name}"), Class::Str { required: true })));
    out
}

fn attempt_header(value: AMQPValue) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(ATTEMPT_HEADER.into(), value);
    t
}

/// The corpus: deterministic for a given bucket (which appears in some bodies).
fn corpus(bucket: &str) -> Vec<Case> {
    let mut rng = Rng(0x5eed_2024_0412_0004);
    let mut cases = Vec::new();
    let mut n = 0u32;
    let mut next_id = |prefix: &str| {
        n += 1;
        format!("p-{prefix}-{n}")
    };
    let to_vec = |v: &Value| serde_json::to_vec(v).unwrap();
    let mut push = |category, what: String, queue, body: Vec<u8>, job_id: Option<String>, code| {
        let job_id = job_id.unwrap_or_else(|| derived_id(&body));
        let headers = FieldTable::default();
        cases.push(Case { category, what, queue, body, headers, job_id, attempt: 1, code, warm_up: false });
    };
    use Category::*;
    use ErrorCode::*;

    // Bad JSON. A valid job cut at every offset (no prefix of a compact object is JSON).
    let whole = to_vec(&json!({"schema": JOB_SCHEMA, "job_id": "cut", "kind": "llm",
        "params": {"prompt": "héllo ☃", "max_tokens": 8}, "output": {"prefix": "p"}}));
    for at in 0..whole.len() {
        push(BadJson, format!("cut at {at}"), JobKind::Llm, whole[..at].to_vec(), None, MalformedMessage);
    }
    for i in 0..40 {
        let len = 16 + rng.below(4096);
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        push(BadJson, format!("random bytes {i}"), JobKind::ALL[i % 4], body, None, MalformedMessage);
    }
    for (what, body) in [
        ("10,000 [", "[".repeat(10_000)),
        ("10,000 [ ]", format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
        ("10,000 {\"a\":", "{\"a\":".repeat(10_000)),
        ("nested objects, closed", format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000))),
        (
            "params nested 10,000 deep",
            format!(
                "{{\"schema\":\"{JOB_SCHEMA}\",\"job_id\":\"deep\",\"kind\":\"llm\",\"params\":{}{}}}",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        ("200 deep", format!("{}{}", "[".repeat(200), "]".repeat(200))),
    ] {
        push(BadJson, what.into(), JobKind::Llm, body.into_bytes(), None, MalformedMessage);
    }
    let valid = String::from_utf8(to_vec(&base(JobKind::Llm, "x", bucket))).unwrap();
    for (what, body) in [
        ("empty object array", "[]".to_string()),
        ("a string", "\"job\"".into()),
        ("a number", "42".into()),
        ("null", "null".into()),
        ("true", "true".into()),
        ("a job in an array", format!("[{valid}]")),
        ("two jobs", format!("{valid}{valid}")),
        ("trailing garbage", format!("{valid}x")),
        ("NaN", valid.replace("0.5", "NaN")),
        ("Infinity", valid.replace("0.5", "Infinity")),
        ("1e400", valid.replace("0.5", "1e400")),
        ("single quotes", valid.replace('"', "'")),
        ("a comment", format!("// job\n{valid}")),
        ("a trailing comma", valid.replacen('}', ",}", 1)),
        ("unquoted keys", valid.replace("\"schema\"", "schema")),
        ("a raw newline in a string", valid.replace("hello", "hel\nlo")),
        ("a raw tab in a string", valid.replace("hello", "hel\tlo")),
        ("whitespace only", " \n\t ".into()),
    ] {
        push(BadJson, what.into(), JobKind::Llm, body.into_bytes(), None, MalformedMessage);
    }

    // Bad UTF-8: sequences no decoder may accept, in a value, a key, an id, and outside any string.
    let bad_sequences: [&[u8]; 11] = [
        b"\xff",
        b"\xfe",
        b"\xc0\x80",
        b"\xc1\xbf",
        b"\xe0\x80\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xf8\x88\x80\x80\x80",
        b"\x80",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
    ];
    for (i, seq) in bad_sequences.iter().enumerate() {
        for (place, needle) in [
            ("a value", "hello"),
            ("a key", "\"prompt\""),
            ("the id", "\"x\""),
            ("metadata", "poison\""),
            ("outside", "{"),
        ] {
            let at = valid.find(needle).unwrap() + 1;
            let mut body = valid.as_bytes().to_vec();
            body.splice(at..at, seq.iter().copied());
            push(BadUtf8, format!("sequence {i} in {place}"), JobKind::Llm, body, None, MalformedMessage);
        }
    }
    for (what, escape) in
        [("lone lead surrogate", "\\ud800"), ("lone trail surrogate", "\\udc00"), ("reversed pair", "\\udc00\\ud800")]
    {
        push(BadUtf8, what.into(), JobKind::Llm, valid.replace("hello", escape).into_bytes(), None, MalformedMessage);
    }
    let utf16: Vec<u8> = [0xFEFFu16].into_iter().chain(valid.encode_utf16()).flat_map(u16::to_le_bytes).collect();
    push(BadUtf8, "UTF-16LE with BOM".into(), JobKind::Llm, utf16, None, MalformedMessage);
    let mut latin1 = valid.replace("hello", "caf").into_bytes();
    let at = latin1.windows(3).position(|w| w == b"caf").unwrap() + 3;
    latin1.insert(at, 0xE9);
    push(BadUtf8, "Latin-1".into(), JobKind::Llm, latin1, None, MalformedMessage);
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(valid.as_bytes());
    push(BadUtf8, "UTF-8 BOM".into(), JobKind::Llm, bom, None, MalformedMessage);

    // Wrong schema.
    for kind in JobKind::ALL {
        let wrong = [
            json!("ainern2d.job.v2"),
            json!("ainern2d.job.v0"),
            json!("ainern2d.job.v1 "),
            json!("AINERN2D.JOB.V1"),
            json!(""),
            json!("ainern2d.event.v1"),
            json!("ainern2d.job.v1\u{0}"),
            json!(1),
            Value::Null,
            json!(true),
            json!([JOB_SCHEMA]),
            json!({"v": 1}),
        ];
        for value in wrong {
            let id = next_id("schema");
            let mut job = base(kind, &id, bucket);
            job["schema"] = value.clone();
            push(Schema, format!("{kind} schema {value}"), kind, to_vec(&job), Some(id), UnsupportedSchema);
        }
        let id = next_id("schema");
        let mut job = base(kind, &id, bucket);
        job.as_object_mut().unwrap().remove("schema");
        push(Schema, format!("{kind} without schema"), kind, to_vec(&job), Some(id), InvalidField);
    }

    // Wrong types for every field of each kind.
    for kind in JobKind::ALL {
        for (pointer, class) in fields(kind) {
            for value in wrong_values(class) {
                let id = next_id("type");
                let mut job = base(kind, &id, bucket);
                *job.pointer_mut(&pointer).unwrap() = value.clone();
                let own_id = (pointer != "/job_id").then_some(id);
                push(WrongType, format!("{kind} {pointer} = {value}"), kind, to_vec(&job), own_id, InvalidField);
            }
        }
    }

    // serde takes a struct from an array of its fields in order; the contract says objects.
    for (kind, pointer, value) in [
        (JobKind::Llm, "/params", json!(["hello"])),
        (JobKind::Lipsync, "/params", json!([null, [0, 0, 16, 16]])),
        (JobKind::Llm, "/output", json!([null, "poison"])),
    ] {
        let id = next_id("type");
        let mut job = base(kind, &id, bucket);
        *job.pointer_mut(pointer).unwrap() = value.clone();
        push(WrongType, format!("{kind} {pointer} = {value}"), kind, to_vec(&job), Some(id), InvalidField);
    }

    // Huge fields.
    let big = |c: char, bytes: usize| c.to_string().repeat(bytes / c.len_utf8());
    let huge: Vec<(JobKind, &str, Value)> = vec![
        (JobKind::Llm, "/params/prompt", json!(big('a', 4 * MB))),
        (JobKind::Llm, "/params/prompt", json!(big('é', 3 * MB))),
        (JobKind::Llm, "/params/system", json!(big('s', 3 * MB))),
        (JobKind::Llm, "/params/model", json!(big('m', MB))),
        (JobKind::Llm, "/params/stop", json!(vec![big('x', 256 * 1024); 8])),
        (JobKind::Llm, "/params/stop", json!(vec!["x"; 100_000])),
        (JobKind::Llm, "/params/max_tokens", json!(big('9', MB))),
        (JobKind::Audio, "/params/text", json!(big('t', 3 * MB))),
        (JobKind::Audio, "/params/voice", json!(big('v', MB))),
        (JobKind::Video, "/params/prompt", json!(big('p', 3 * MB))),
        (JobKind::Video, "/params/negative_prompt", json!(big('n', 3 * MB))),
        (JobKind::Video, "/params/workflow", json!(big('w', MB))),
        (JobKind::Video, "/idempotency_key", json!(big('k', MB))),
        (JobKind::Video, "/traceparent", json!(big('0', MB))),
        (JobKind::Video, "/output/prefix", json!(big('o', MB))),
        (JobKind::Video, "/output/bucket", json!(big('b', MB))),
        (JobKind::Video, "/metadata/team", json!(big('m', 3 * MB))),
        (JobKind::Video, "/metadata", Value::Object((0..100_000).map(|i| (format!("k{i}"), json!("v"))).collect())),
        (JobKind::Video, "/params/huge_unknown", json!(vec![1; 500_000])),
        (JobKind::Lipsync, "/params/model", json!(big('m', MB))),
        (
            JobKind::Lipsync,
            "/inputs",
            Value::Object((0..10_000).map(|i| (format!("input{i}"), json!(format!("s3://{bucket}/in/{i}")))).collect()),
        ),
        (JobKind::Video, "/inputs/image", json!(format!("https://169.254.169.254/{}", big('a', MB)))),
        (JobKind::Video, "/inputs/image", json!(format!("s3://{bucket}/{}", big('k', MB)))),
        (JobKind::Video, "/inputs/image", json!(big('r', MB))),
    ];
    // Three times, under other ids: the first pass warms the allocator up before the memory baseline, and
    // the other two are more megabytes than the bound on growth after it, were they kept.
    let mut warm_up = BTreeSet::new();
    for pass in 0..3 {
        for (kind, pointer, value) in &huge {
            let id = next_id("huge");
            let mut job = base(*kind, &id, bucket);
            match job.pointer_mut(pointer) {
                Some(slot) => *slot = value.clone(),
                None => {
                    let (parent, key) = pointer.rsplit_once('/').unwrap();
                    job.pointer_mut(parent).unwrap()[key] = value.clone();
                }
            }
            if pass == 0 {
                warm_up.insert(id.clone());
            }
            push(Huge, format!("{kind} huge {pointer}, pass {pass}"), *kind, to_vec(&job), Some(id), InvalidField);
        }
        let long_id = format!("{pass}{}", big('j', MB));
        let body = to_vec(&base(JobKind::Llm, &long_id, bucket));
        if pass == 0 {
            warm_up.insert(derived_id(&body));
        }
        push(Huge, format!("a 1 MB job id, pass {pass}"), JobKind::Llm, body, None, InvalidField);
    }

    // Missing required fields and inputs.
    let mut missing: Vec<(JobKind, &str)> = vec![
        (JobKind::Lipsync, "/inputs/video"),
        (JobKind::Lipsync, "/inputs/audio"),
        (JobKind::Lipsync, "/inputs"),
        (JobKind::Llm, "/params/prompt"),
        (JobKind::Llm, "/params"),
        (JobKind::Audio, "/params/text"),
        (JobKind::Audio, "/params"),
        (JobKind::Video, "/params/width"),
        (JobKind::Video, "/params/height"),
        (JobKind::Video, "/params/duration_s"),
        (JobKind::Video, "/params"),
        (JobKind::Video, "/output/prefix"),
    ];
    for kind in JobKind::ALL {
        missing.extend([(kind, "/job_id"), (kind, "/kind"), (kind, "/output")]);
    }
    for (kind, pointer) in missing {
        let id = next_id("missing");
        let mut job = base(kind, &id, bucket);
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        job.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key).unwrap();
        let own_id = (pointer != "/job_id").then_some(id);
        push(Missing, format!("{kind} without {pointer}"), kind, to_vec(&job), own_id, InvalidField);
    }
    for (kind, inputs) in [
        (JobKind::Lipsync, json!({"video": "", "audio": ""})),
        (JobKind::Llm, json!({"image": format!("s3://{bucket}/in/still.png")})),
        (JobKind::Audio, json!({"image": format!("s3://{bucket}/in/still.png")})),
        (JobKind::Video, json!({"reference": format!("s3://{bucket}/in/ref.wav")})),
    ] {
        let id = next_id("missing");
        let mut job = base(kind, &id, bucket);
        job["inputs"] = inputs.clone();
        push(Missing, format!("{kind} inputs {inputs}"), kind, to_vec(&job), Some(id), InvalidField);
    }

    // `..`, absolute, backslash and NUL paths.
    for prefix in [
        "../x",
        "a/../b",
        "a/..",
        "..",
        ".",
        "a/./b",
        "/abs",
        "abs/",
        "a//b",
        "a\\b",
        "..\\..\\x",
        "a\0b",
        "a b",
        "~root",
        "C:\\x",
        "\\\\server\\share",
        "a/\u{202e}b",
        "%2e%2e/x",
        "a\nb",
    ] {
        let id = next_id("path");
        let mut job = base(JobKind::Video, &id, bucket);
        job["output"]["prefix"] = json!(prefix);
        push(Paths, format!("output prefix {prefix:?}"), JobKind::Video, to_vec(&job), Some(id), InvalidField);
    }
    for name in ["../image", "image/..", "/image", "im\\age", "image\0", "video/../audio"] {
        let id = next_id("path");
        let mut job = base(JobKind::Lipsync, &id, bucket);
        job["inputs"][name] = json!(format!("s3://{bucket}/in/x"));
        push(Paths, format!("input name {name:?}"), JobKind::Lipsync, to_vec(&job), Some(id), InvalidField);
    }
    for (url, code) in [
        (format!("s3://{bucket}/../../etc/passwd"), InvalidField),
        (format!("s3://{bucket}/a/../../b"), InvalidField),
        (format!("s3://{bucket}//etc/passwd"), InvalidField),
        (format!("s3://{bucket}/./x"), InvalidField),
        (format!("s3://{bucket}/a/.."), InvalidField),
        // A backslash is an ordinary character of an S3 key: that object does not exist.
        (format!("s3://{bucket}/..\\..\\x"), InputUnavailable),
        (format!("s3://{bucket}/a\0b"), InvalidField),
        (format!("s3://{bucket}/"), InvalidField),
        ("s3:///etc/passwd".to_string(), InvalidField),
        ("s3://../etc/passwd".to_string(), InvalidField),
        ("../etc/passwd".to_string(), InvalidField),
        ("/etc/passwd".to_string(), InvalidField),
        ("a//b".to_string(), InvalidField),
        ("C:\\Windows\\win.ini".to_string(), InvalidField),
        ("etc/passwd".to_string(), InputRefused),
        ("a\\..\\..\\b".to_string(), InputRefused),
        ("a\0b".to_string(), InputRefused),
    ] {
        let id = next_id("path");
        let mut job = base(JobKind::Video, &id, bucket);
        job["inputs"]["image"] = json!(url);
        push(Paths, format!("input key {url:?}"), JobKind::Video, to_vec(&job), Some(id), code);
    }

    // Hostile input URLs.
    for (kind, input, url, code) in [
        (JobKind::Video, "image", "file:///etc/passwd", InvalidField),
        (JobKind::Video, "image", "gopher://127.0.0.1:70/_GET", InvalidField),
        (JobKind::Video, "image", "ftp://127.0.0.1/x", InvalidField),
        (JobKind::Video, "image", "javascript:alert(1)", InvalidField),
        (JobKind::Video, "image", "data:image/png;base64,AAAA", InvalidField),
        (JobKind::Audio, "reference", "dict://127.0.0.1:11211/stat", InvalidField),
        (JobKind::Audio, "reference", "ldap://127.0.0.1/", InvalidField),
        (JobKind::Audio, "reference", "HTTP://169.254.169.254/", InvalidField),
        (JobKind::Video, "image", "http://169.254.169.254/latest/meta-data/", InputRefused),
        (JobKind::Video, "image", "https://169.254.169.254/latest/meta-data/", InputRefused),
        (JobKind::Video, "image", "http://0x7f.1/", InputRefused),
        (JobKind::Video, "image", "https://0x7f.1/", InputRefused),
        (JobKind::Video, "image", "https://2130706433/", InputRefused),
        (JobKind::Video, "image", "https://0177.0.0.1/", InputRefused),
        (JobKind::Video, "image", "https://127.1/", InputRefused),
        (JobKind::Video, "image", "https://[::1]/", InputRefused),
        (JobKind::Video, "image", "https://[::ffff:127.0.0.1]/", InputRefused),
        (JobKind::Video, "image", "https://[fd00::1]/", InputRefused),
        (JobKind::Video, "image", "https://0.0.0.0/", InputRefused),
        (JobKind::Video, "image", "https://10.0.0.1/", InputRefused),
        (JobKind::Video, "image", "https://192.168.1.1/", InputRefused),
        (JobKind::Video, "image", "https://localhost/", InputRefused),
        (JobKind::Video, "image", "https://a.localhost/", InputRefused),
        (JobKind::Audio, "reference", "https://user:pass@127.0.0.1/", InputRefused),
        (JobKind::Audio, "reference", "https://[::1]:22/", InputRefused),
        (JobKind::Lipsync, "both", "https://169.254.169.254/", InputRefused),
        (JobKind::Lipsync, "both", "https://127.0.0.1:5672/", InputRefused),
        (JobKind::Video, "image", "s3://not-an-allowed-bucket/x.png", InputRefused),
        (JobKind::Video, "image", "examples/media/still.png", InputRefused),
        (JobKind::Video, "image", "https://", InputRefused),
        (JobKind::Video, "image", "https://[::1", InputRefused),
    ] {
        let id = next_id("url");
        let mut job = base(kind, &id, bucket);
        // Lipsync fetches `audio` first: both are hostile, so that neither is merely missing.
        let names = if input == "both" { vec!["audio", "video"] } else { vec![input] };
        for name in names {
            job["inputs"][name] = json!(url);
        }
        push(HostileUrl, format!("{kind}.{input} = {url}"), kind, to_vec(&job), Some(id), code);
    }

    // A job of each kind on every other kind's queue, and one of no kind.
    for queue in JobKind::ALL {
        for kind in JobKind::ALL.into_iter().filter(|k| *k != queue) {
            let id = next_id("kind");
            let job = base(kind, &id, bucket);
            push(WrongKind, format!("{kind} job on the {queue} queue"), queue, to_vec(&job), Some(id), InvalidField);
        }
        let id = next_id("kind");
        let mut job = base(queue, &id, bucket);
        job["kind"] = json!("image");
        push(WrongKind, format!("an image job on the {queue} queue"), queue, to_vec(&job), Some(id), InvalidField);
    }

    // Odd AMQP headers, on an invalid job (an odd width) so that each ends as a dead letter.
    let odd_width = |id: &str| {
        let mut job = base(JobKind::Video, id, bucket);
        job["params"]["width"] = json!(65);
        to_vec(&job)
    };
    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let mut many = FieldTable::default();
    for i in 0..3000 {
        many.insert(format!("x-h{i}").into(), AMQPValue::LongLongInt(i));
    }
    let mut big_header = attempt_header(AMQPValue::LongLongInt(2));
    big_header.insert("x-big".into(), text(&"h".repeat(100 * 1024)));
    let mut not_utf8 = FieldTable::default();
    not_utf8.insert("x-bytes".into(), AMQPValue::LongString(LongString::from(vec![0xffu8; 48 * 1024])));
    let mut forged = attempt_header(AMQPValue::LongLongInt(1));
    forged.insert(REASON_HEADER.into(), text("all is well"));
    forged.insert(ERROR_CODE_HEADER.into(), text("none"));
    forged.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(FieldTable::default())])),
    );
    let mut table = FieldTable::default();
    table.insert("n".into(), AMQPValue::LongLongInt(2));
    let headers: Vec<(&str, FieldTable, u32)> = vec![
        ("attempt 2", attempt_header(AMQPValue::LongLongInt(2)), 2),
        ("attempt \"3\"", attempt_header(text("3")), 3),
        ("attempt \"+4\"", attempt_header(text("+4")), 4),
        ("attempt \"three\"", attempt_header(text("three")), 1),
        ("attempt \" 2\"", attempt_header(text(" 2")), 1),
        ("attempt \"\"", attempt_header(text("")), 1),
        ("attempt 0", attempt_header(AMQPValue::LongLongInt(0)), 1),
        ("attempt -5", attempt_header(AMQPValue::LongLongInt(-5)), 1),
        ("attempt i64::MIN", attempt_header(AMQPValue::LongLongInt(i64::MIN)), 1),
        ("attempt i64::MAX", attempt_header(AMQPValue::LongLongInt(i64::MAX)), 1),
        ("attempt u32::MAX", attempt_header(AMQPValue::LongLongInt(u32::MAX.into())), u32::MAX),
        ("attempt 2^32", attempt_header(AMQPValue::LongLongInt(1 << 32)), 1),
        ("attempt u32 7", attempt_header(AMQPValue::LongUInt(7)), 7),
        ("attempt i8 -1", attempt_header(AMQPValue::ShortShortInt(-1)), 1),
        ("attempt u16 9", attempt_header(AMQPValue::ShortUInt(9)), 9),
        ("attempt 2.0", attempt_header(AMQPValue::Double(2.0)), 1),
        ("attempt 2.5f", attempt_header(AMQPValue::Float(2.5)), 1),
        ("attempt true", attempt_header(AMQPValue::Boolean(true)), 1),
        ("attempt [2]", attempt_header(AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongLongInt(2)]))), 1),
        ("attempt {n: 2}", attempt_header(AMQPValue::FieldTable(table)), 1),
        ("attempt bytes", attempt_header(AMQPValue::ByteArray(ByteArray::from(b"2".to_vec()))), 1),
        ("attempt timestamp", attempt_header(AMQPValue::Timestamp(2)), 1),
        ("attempt void", attempt_header(AMQPValue::Void), 1),
        ("attempt decimal", attempt_header(AMQPValue::DecimalValue(DecimalValue { scale: 1, value: 20 })), 1),
        ("3,000 headers", many, 1),
        ("a 100 KiB header", big_header, 2),
        ("48 KiB of invalid UTF-8 in a header", not_utf8, 1),
        ("forged reason, code and x-death", forged, 1),
    ];
    for (what, headers, attempt) in headers {
        let id = next_id("header");
        let body = odd_width(&id);
        cases.push(Case {
            category: Headers,
            what: what.into(),
            queue: JobKind::Video,
            body,
            headers,
            job_id: id,
            attempt,
            code: InvalidField,
            warm_up: false,
        });
    }

    // A redelivery storm of one message.
    let storm = odd_width("storm");
    for attempt in (1..=60).chain(std::iter::repeat_n(0, 20)) {
        let headers =
            if attempt == 0 { FieldTable::default() } else { attempt_header(AMQPValue::LongLongInt(attempt)) };
        cases.push(Case {
            category: Storm,
            what: format!("storm at attempt {attempt}"),
            queue: JobKind::Video,
            body: storm.clone(),
            headers,
            job_id: "storm".into(),
            attempt: attempt.max(1) as u32,
            code: InvalidField,
            warm_up: false,
        });
    }
    for case in &mut cases {
        case.warm_up = warm_up.contains(&case.job_id);
    }
    // Mixed, as traffic is: the multi-MB messages spread over the run rather than all in flight at once.
    for i in (1..cases.len()).rev() {
        cases.swap(i, rng.below(i + 1));
    }
    cases
}

/// An AMQP header as text (numbers in decimal, other types in their debug form).
fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The last 60 lines of a log, or those from its first panic on, each cut to 300 characters (some quote
/// megabytes of a message).
fn log_tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    let from = match lines.iter().position(|l| l.contains("panicked at")) {
        Some(panic) => panic.saturating_sub(5),
        None => lines.len().saturating_sub(60),
    };
    let to = lines.len().min(from + 60);
    lines[from..to].iter().map(|l| l.chars().take(300).collect::<String>()).collect::<Vec<_>>().join("\n")
}

async fn publish_all(channel: &Channel, prefix: &str, cases: &[&Case]) {
    let mut confirms = Vec::with_capacity(cases.len());
    for case in cases {
        let props = BasicProperties::default().with_delivery_mode(2).with_headers(case.headers.clone());
        let confirm = channel
            .basic_publish(
                "".into(),
                format!("{prefix}.jobs.{}", case.queue).as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &case.body,
                props,
            )
            .await
            .unwrap_or_else(|e| panic!("publishing {}: {e}", case.what));
        confirms.push(confirm);
    }
    for (confirm, case) in confirms.into_iter().zip(cases) {
        let confirm = confirm.await.unwrap_or_else(|e| panic!("confirm of {}: {e}", case.what));
        assert!(matches!(confirm, lapin::Confirmation::Ack(None)), "{}: {confirm:?}", case.what);
    }
}

#[test]
fn the_base_jobs_are_valid() {
    // Each corpus case breaks one thing of a valid job: the base itself must pass.
    for kind in JobKind::ALL {
        let body = serde_json::to_vec(&base(kind, "ok", "a-bucket")).unwrap();
        ainern2d_contract::parse_job(&body).unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_poison_message_ends_as_a_dead_letter_with_a_failed_event() {
    let started = Instant::now();
    let s = Bed::new("poison").await;
    let cases = corpus(&s.bucket);
    let keys: BTreeSet<_> =
        cases.iter().filter(|c| c.category != Category::Storm).map(|c| (&c.job_id, c.attempt)).collect();
    assert_eq!(keys.len(), cases.iter().filter(|c| c.category != Category::Storm).count(), "event keys are unique");
    let bytes: usize = cases.iter().map(|c| c.body.len()).sum();
    let mut by_category: BTreeMap<Category, usize> = BTreeMap::new();
    for c in &cases {
        *by_category.entry(c.category).or_default() += 1;
    }
    eprintln!("corpus: {} messages, {:.1} MB: {by_category:?}", cases.len(), bytes as f64 / MB as f64);

    let (config, _) = s.config("");
    let mut w = Worker::spawn_bin_env("ainern2d-worker", &config, &[("AINERN2D_ABORT_ON_PANIC", "1")]);
    w.wait_ready().await;
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;
    // The first pass of the multi-MB messages, then the baseline: what they leave behind is the
    // allocator's high-water mark of a few of them in flight at once, which the rest must not raise much.
    let rss_start = w.status_kb("VmRSS");
    let dead = format!("{}.dead", s.prefix);
    let (first, rest): (Vec<&Case>, Vec<&Case>) = cases.iter().partition(|c| c.warm_up);
    publish_all(&s.channel, &s.prefix, &first).await;
    wait_queue_len(&s.channel, &dead, first.len() as u32, T).await;
    let rss_before = w.status_kb("VmRSS");
    publish_all(&s.channel, &s.prefix, &rest).await;
    let deadline = Instant::now() + T;
    let failed = |tap: &EventTap| tap.seen.iter().filter(|e| e.status.is_terminal()).count();
    while failed(&tap) < cases.len() {
        if let Some(status) = w.child.try_wait().unwrap() {
            panic!("the worker died ({status}):\n{}", log_tail(&w.logs()));
        }
        if Instant::now() > deadline {
            let got: BTreeSet<_> = tap.seen.iter().map(|e| (e.job_id.clone(), e.attempt)).collect();
            let missing: Vec<_> = cases
                .iter()
                .filter(|c| !got.contains(&(c.job_id.clone(), c.attempt)))
                .map(|c| format!("{:?} {}", c.category, c.what.chars().take(100).collect::<String>()))
                .take(40)
                .collect();
            panic!(
                "{} of {} failed events within {T:?}; none for {missing:#?}\nworker:\n{}",
                failed(&tap),
                cases.len(),
                log_tail(&w.logs())
            );
        }
        tap.drain_for(Duration::from_millis(500)).await;
    }
    // Anything late (a second outcome, a retry) would arrive now.
    tap.drain_for(Duration::from_secs(2)).await;
    let rss_after = w.status_kb("VmRSS");
    let peak = w.status_kb("VmHWM");
    let elapsed_corpus = started.elapsed();

    // Exactly one failed event per message, with the code of its case.
    let mut expected: BTreeMap<(String, u32), (usize, &Case)> = BTreeMap::new();
    for c in &cases {
        expected.entry((c.job_id.clone(), c.attempt)).or_insert((0, c)).0 += 1;
    }
    let mut seen: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let mut codes: BTreeMap<Category, BTreeSet<&str>> = BTreeMap::new();
    // Every mismatch, so that one run shows them all.
    let mut wrong = Vec::new();
    for e in &tap.seen {
        let key = (e.job_id.clone(), e.attempt);
        let Some((_, case)) = expected.get(&key) else {
            wrong.push(format!("an event for no message of the corpus: {e:?}"));
            continue;
        };
        let what = format!("{:?} {}", case.category, case.what.chars().take(120).collect::<String>());
        match e.status {
            EventStatus::Accepted | EventStatus::Running => continue,
            EventStatus::Failed => {}
            other => {
                wrong.push(format!("{what}: {other:?}, {:?}", e.error));
                continue;
            }
        }
        let error = e.error.as_ref().expect("a failed event carries its error");
        if error.code != case.code || error.retryable {
            wrong.push(format!("{what}: {} (retryable {}): {}", error.code.as_str(), error.retryable, error.message));
        }
        if error.message.len() > 2048 {
            wrong.push(format!("{what}: a {} byte error message", error.message.len()));
        }
        if matches!(error.code, ErrorCode::InvalidField | ErrorCode::UnsupportedSchema)
            && error.field.as_ref().is_none_or(|f| f.len() > 256)
        {
            wrong.push(format!("{what}: no field, or a long one: {:?}", error.field.as_ref().map(String::len)));
        }
        codes.entry(case.category).or_default().insert(error.code.as_str());
        *seen.entry(key).or_default() += 1;
    }
    for (key, (count, case)) in &expected {
        let got = seen.get(key).copied().unwrap_or(0);
        if got != *count {
            wrong.push(format!("{:?} {}: {got} failed events, expected {count}", case.category, case.what));
        }
    }
    assert!(wrong.is_empty(), "{} mismatches:\n{}", wrong.len(), wrong.join("\n"));
    for (category, seen) in &codes {
        assert!(seen.is_subset(&category.codes()), "{category:?} ended with {seen:?}");
    }
    eprintln!("codes by category: {codes:?}");

    // Exactly one dead letter per message, with the reason and the code of its case.
    let mut letters: BTreeMap<(String, u32), usize> = BTreeMap::new();
    let mut by_letter: BTreeMap<(String, u32), &Case> = BTreeMap::new();
    for c in &cases {
        let key = (sha256_hex(&c.body), c.attempt);
        *letters.entry(key.clone()).or_default() += 1;
        by_letter.insert(key, c);
    }
    assert_eq!(queue_len(&s.channel, &dead).await as usize, cases.len(), "dead letters");
    let mut max_reason = 0;
    for _ in 0..cases.len() {
        let got = s.channel.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap().unwrap();
        let headers = got.properties.headers().clone().unwrap_or_default();
        let attempt: u32 = header_text(&headers, ATTEMPT_HEADER).and_then(|a| a.parse().ok()).expect("attempt header");
        let key = (sha256_hex(&got.delivery.data), attempt);
        let case = by_letter.get(&key).unwrap_or_else(|| panic!("a dead letter of no message (attempt {attempt})"));
        let count = letters.get_mut(&key).unwrap();
        assert!(*count > 0, "a second dead letter of {}", case.what);
        *count -= 1;
        let code = header_text(&headers, ERROR_CODE_HEADER).expect("error code header");
        assert_eq!(code, case.code.as_str(), "{}", case.what);
        let reason = header_text(&headers, REASON_HEADER).expect("reason header");
        assert!(!reason.is_empty(), "{}", case.what);
        max_reason = max_reason.max(reason.len());
    }
    assert!(max_reason <= 2048, "a {max_reason} byte reason header");

    // Nothing left in a job queue or a retry queue, and the worker serves a good job.
    for kind in JobKind::ALL {
        assert_eq!(queue_len(&s.channel, &format!("{}.jobs.{kind}", s.prefix)).await, 0, "{kind} queue");
        for level in 0..3 {
            assert_eq!(
                queue_len(
                    &s.channel,
                    &ainern2d_contract::topology::Topology::new(s.prefix.clone()).retry_queue(kind, level)
                )
                .await,
                0
            );
        }
    }
    assert_eq!(worker_state(w.http_port).await, "ready");
    s.submit(JobKind::Llm, "after-the-corpus").await;
    assert_eq!(tap.terminal("after-the-corpus", T).await.status, EventStatus::Succeeded);
    let metrics =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", w.http_port)).await.unwrap().text().await.unwrap();
    for line in ["ainern2d_worker_outcome_failures_total 0", "ainern2d_worker_broker_reconnects_total 0"] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }

    // Memory.
    let growth_mb = (rss_after as f64 - rss_before as f64) / 1024.0;
    eprintln!(
        "RSS {:.1} MB at the start, {:.1} MB after the first {} multi-MB messages, {:.1} MB after the other {} \
         messages ({growth_mb:+.1} MB), peak {:.1} MB; corpus handled in {:.1} s",
        rss_start as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        first.len(),
        rss_after as f64 / 1024.0,
        rest.len(),
        peak as f64 / 1024.0,
        elapsed_corpus.as_secs_f64()
    );
    // Measured on the 2-core machine (10 runs): 78 MB at the start, 120-129 MB after the first 25 multi-MB
    // messages (the allocator keeps the space of the few that were in flight at once: bodies, parse trees,
    // publish buffers of up to 12 prefetched deliveries), then -1 to +36 MB more over the rest of the corpus,
    // whose other 50 multi-MB messages are 77 MB; ten more rounds of them (400 MB) stayed at that level
    // (no trend). 64 MB leaves room for that scatter, and a worker that kept those 77 MB would exceed it.
    assert!(growth_mb < 64.0, "RSS grew by {growth_mb:.1} MB after the first multi-MB messages");

    // No panic anywhere, and a clean exit: a panic would have aborted the process (SIGABRT, no exit code).
    let logs = w.logs();
    assert!(!logs.contains("panicked at"), "{logs}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0, "{}", w.logs());
    for kind in JobKind::ALL {
        // An unsettled delivery would be back in its queue once the worker's connection closed.
        assert_eq!(queue_len(&s.channel, &format!("{}.jobs.{kind}", s.prefix)).await, 0, "{kind} queue after exit");
    }
    eprintln!("poison test: {:.1} s", started.elapsed().as_secs_f64());
    s.cleanup().await;
}

/// A tiny Llama checkpoint without one of its tensors: candle's loader panics on it (inside the worker's
/// `catch_unwind`). The safetensors file is rewritten here: an 8-byte header length, the JSON header of
/// names, dtypes, shapes and data offsets, then the data.
fn broken_checkpoint(dir: &std::path::Path) {
    use ainern2d_pipelines::llm::tiny::{TinyArch, write_safetensors};
    write_safetensors(dir, TinyArch::Llama).unwrap();
    let path = dir.join("model.safetensors");
    let file = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&file[8..8 + n]).unwrap();
    let data = &file[8 + n..];
    let mut tensors: Vec<(String, Value)> =
        header.into_iter().filter(|(name, _)| name != "model.layers.1.mlp.up_proj.weight").collect();
    assert!(tensors.len() > 1);
    tensors.sort_by_key(|(_, t)| t["data_offsets"][0].as_u64().unwrap_or(0));
    let mut out_header = serde_json::Map::new();
    let mut out_data = Vec::new();
    for (name, mut t) in tensors {
        if name == "__metadata__" {
            out_header.insert(name, t);
            continue;
        }
        let (from, to) =
            (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
        t["data_offsets"] = json!([out_data.len(), out_data.len() + to - from]);
        out_data.extend_from_slice(&data[from..to]);
        out_header.insert(name, t);
    }
    let mut header = serde_json::to_vec(&out_header).unwrap();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(out_data);
    std::fs::write(path, file).unwrap();
}

/// The control of the poison test's exit code: a panic the worker catches on purpose ends it with SIGABRT
/// when `AINERN2D_ABORT_ON_PANIC=1`, and only fails the job without it.
#[tokio::test(flavor = "multi_thread")]
async fn the_abort_switch_turns_a_caught_panic_into_sigabrt() {
    let s = Bed::new("abort").await;
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    broken_checkpoint(&st);
    let manifest = dir.path().join("models.toml");
    std::fs::write(
        &manifest,
        format!(
            "default_llm = \"broken\"\ncache_dir = \"{cache}\"\ndevice = \"cpu\"\n[models.broken]\nkind = \"llm\"\n\
             format = \"safetensors\"\nsource = \"{st}/model.safetensors\"\ntokenizer = \"{st}/tokenizer.json\"\n\
             memory_mb = 1\n",
            cache = dir.path().join("cache").display(),
            st = st.display()
        ),
    )
    .unwrap();
    let extra = format!(
        "[jobs]\nkinds = [\"llm\"]\n[jobs.backends]\nllm = \"inference\"\n[models]\nmanifest = \"{}\"\n",
        manifest.display()
    );
    let mut tap = EventTap::new(&s.channel, &s.prefix).await;

    // Without the switch: the loader's panic is caught, the job fails, the worker lives on.
    let (config, _) = s.config(&extra);
    let mut w = Worker::spawn(&config);
    w.wait_ready().await;
    s.submit(JobKind::Llm, "caught").await;
    let event = tap.terminal("caught", T).await;
    let error = event.error.expect("an error");
    assert_eq!((event.status, error.code), (EventStatus::Failed, ErrorCode::PipelineFailed), "{}", error.message);
    assert!(error.message.contains("does not match its architecture"), "{}", error.message);
    assert!(w.logs().contains("panicked at"), "the panic happened:\n{}", w.logs());
    assert_eq!(worker_state(w.http_port).await, "ready");
    w.signal("TERM");
    assert_eq!(w.wait_exit(T).await, 0, "{}", w.logs());

    // With it: the same panic ends the process with SIGABRT, and the job is back in its queue.
    let (config, _) = s.config(&extra);
    let mut w = Worker::spawn_bin_env("ainern2d-worker", &config, &[("AINERN2D_ABORT_ON_PANIC", "1")]);
    w.wait_ready().await;
    s.submit(JobKind::Llm, "aborts").await;
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not die:\n{}", w.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.signal(), Some(6), "SIGABRT, not {status:?}:\n{}", w.logs());
    assert!(w.logs().contains("panicked at"), "{}", w.logs());
    wait_queue_len(&s.channel, &format!("{}.jobs.llm", s.prefix), 1, T).await;
    assert_eq!(tap.count("aborts", EventStatus::Failed), 0);
    s.cleanup().await;
}
