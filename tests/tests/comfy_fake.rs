//! The fake ComfyUI (`ainern2d_tests::comfy`) driven with plain reqwest and tokio-tungstenite, to show it
//! speaks the protocol of ComfyUI v0.8.0: message orders A/B/C, history after `executing{node:null}`,
//! targeted interrupts, queue deletion, the 400 shapes, the `/api` prefix and restarts.

use std::time::Duration;

use ainern2d_tests::comfy::{At, Behaviour, Failure, FakeComfy, OutputFile, Reject, View};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}")).0
}

/// The next JSON message, skipping binary previews (they are counted in `binary`).
async fn next_json(ws: &mut Ws, binary: &mut Vec<Vec<u8>>) -> Value {
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("no WebSocket message in 10 s");
        match frame {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Binary(b))) => binary.push(b.to_vec()),
            Some(Ok(_)) => {}
            other => panic!("WebSocket ended: {other:?}"),
        }
    }
}

/// Messages up to and including `executing{node:null}` for `prompt_id`.
async fn until_done(ws: &mut Ws, prompt_id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut binary = Vec::new();
    loop {
        let m = next_json(ws, &mut binary).await;
        let done = m["type"] == "executing" && m["data"]["node"].is_null() && m["data"]["prompt_id"] == prompt_id;
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// One line per message, enough to compare orders exactly.
fn summary(m: &Value) -> String {
    let d = &m["data"];
    match m["type"].as_str().unwrap() {
        "status" => format!("status {}", d["status"]["exec_info"]["queue_remaining"]),
        "execution_cached" => format!("execution_cached {}", d["nodes"]),
        "executing" => format!("executing {}", d["node"].as_str().unwrap_or("null")),
        "progress" => format!("progress {} {}/{}", d["node"].as_str().unwrap(), d["value"], d["max"]),
        "executed" => format!("executed {}", d["node"].as_str().unwrap()),
        "progress_state" => {
            let nodes = d["nodes"].as_object().unwrap();
            let parts: Vec<String> = nodes
                .iter()
                .map(|(id, n)| format!("{id}={}({}/{})", n["state"].as_str().unwrap(), n["value"], n["max"]))
                .collect();
            format!("progress_state {}", parts.join(" "))
        }
        other => other.to_string(),
    }
}

/// EmptyLatentImage → KSampler (`steps`) → SaveImage.
fn workflow(steps: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "latent_image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "smoke"}},
    })
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() })
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn success_follows_order_a_and_history_is_there_at_the_end() {
    let fake = FakeComfy::start(Behaviour { previews: true, ..Default::default() }).await;
    let http = reqwest::Client::new();
    let mut ws = connect(&fake.ws_url("c1")).await;
    let mut binary = Vec::new();
    let hello = next_json(&mut ws, &mut binary).await;
    assert_eq!(
        hello,
        json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "c1"}})
    );

    let (status, answer) = post(
        &http,
        format!("{}/prompt", fake.url()),
        json!({"prompt": workflow(3), "client_id": "c1", "prompt_id": "p1"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"prompt_id": "p1", "number": 0, "node_errors": {}}));

    let mut seen = Vec::new();
    loop {
        let m = next_json(&mut ws, &mut binary).await;
        let done = m["type"] == "executing" && m["data"]["node"].is_null();
        if done {
            // The entry is written before the last status and executing{node:null}.
            let h = get(format!("{}/history/p1", fake.url())).await;
            assert_eq!(h["p1"]["status"]["status_str"], "success", "{h}");
        }
        seen.push(m);
        if done {
            break;
        }
    }
    let lines: Vec<String> = seen.iter().map(summary).collect();
    let expected = [
        "status 1",
        "status 1",
        "execution_start",
        "execution_cached []",
        "progress_state 1=running(0.0/1.0)",
        "executing 1",
        "progress_state 1=finished(1.0/1.0)",
        "progress_state 1=finished(1.0/1.0) 2=running(0.0/1.0)",
        "executing 2",
        "progress_state 1=finished(1.0/1.0) 2=running(1/3)",
        "progress 2 1/3",
        "progress_state 1=finished(1.0/1.0) 2=running(2/3)",
        "progress 2 2/3",
        "progress_state 1=finished(1.0/1.0) 2=running(3/3)",
        "progress 2 3/3",
        "progress_state 1=finished(1.0/1.0) 2=finished(3/3)",
        "progress_state 1=finished(1.0/1.0) 2=finished(3/3) 3=running(0.0/1.0)",
        "executing 3",
        "executed 3",
        "progress_state 1=finished(1.0/1.0) 2=finished(3/3) 3=finished(1.0/1.0)",
        "execution_success",
        "status 0",
        "executing null",
    ];
    assert_eq!(lines, expected);
    for m in seen[2..].iter().filter(|m| m["type"] != "status") {
        assert_eq!(m["data"]["prompt_id"], "p1", "{m}");
    }
    assert!(seen[2]["data"]["timestamp"].as_i64().unwrap() > 1_700_000_000_000, "timestamps are ms");
    assert_eq!(seen[5]["data"], json!({"node": "1", "display_node": "1", "prompt_id": "p1"}));
    let image = json!({"filename": "smoke_00001_.png", "subfolder": "", "type": "output"});
    assert_eq!(seen[18]["data"]["output"], json!({"images": [image]}));
    // One preview per tick: type 1 (PREVIEW_IMAGE), then format 1 (JPEG), then the JPEG bytes.
    assert_eq!(binary.len(), 3);
    assert_eq!(&binary[0][..10], &[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xd8]);

    let entry = &get(format!("{}/history/p1", fake.url())).await["p1"];
    assert_eq!(entry["outputs"]["3"], json!({"images": [image]}));
    assert_eq!(entry["prompt"].as_array().unwrap().len(), 5);
    assert_eq!(entry["prompt"][1], "p1");
    assert_eq!(entry["prompt"][4], json!(["3"]));
    assert_eq!(entry["prompt"][3]["client_id"], "c1");
    let events: Vec<&str> =
        entry["status"]["messages"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap()).collect();
    assert_eq!(events, ["execution_start", "execution_cached", "execution_success"]);
    assert_eq!(
        entry["meta"]["3"],
        json!({"node_id": "3", "display_node": "3", "parent_node": null, "real_node_id": "3"})
    );

    let view =
        reqwest::get(format!("{}/view?filename=smoke_00001_.png&subfolder=&type=output", fake.url())).await.unwrap();
    assert_eq!(view.status(), 200);
    assert_eq!(view.headers()["content-type"], "image/png");
    assert!(view.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let missing = reqwest::get(format!("{}/view?filename=nope.png&type=output", fake.url())).await.unwrap();
    assert_eq!(missing.status(), 404);

    // The same prompt id again is queued again (no dedup) and the number counter moves on.
    let (_, again) = post(
        &http,
        format!("{}/prompt", fake.url()),
        json!({"prompt": workflow(1), "client_id": "c1", "prompt_id": "p1"}),
    )
    .await;
    assert_eq!(again["number"], 1);
    until_done(&mut ws, "p1").await;
    assert_eq!(fake.file("output", "", "smoke_00002_.png").map(|b| b.len()), Some(70));
}

#[tokio::test]
async fn targeted_interrupt_only_hits_the_running_prompt() {
    let fake = FakeComfy::start(Behaviour { step_delay: Duration::from_millis(40), ..Default::default() }).await;
    let http = reqwest::Client::new();
    let mut ws = connect(&fake.ws_url("c2")).await;
    let mut binary = Vec::new();
    next_json(&mut ws, &mut binary).await;
    post(
        &http,
        format!("{}/prompt", fake.url()),
        json!({"prompt": workflow(200), "client_id": "c2", "prompt_id": "run"}),
    )
    .await;
    let mut progress = 0;
    let mut after_wrong = 0;
    let interrupted = loop {
        let m = next_json(&mut ws, &mut binary).await;
        match m["type"].as_str().unwrap() {
            "progress" => {
                progress += 1;
                if progress == 1 {
                    let (s, body) =
                        post(&http, format!("{}/interrupt", fake.url()), json!({"prompt_id": "not-running"})).await;
                    assert_eq!((s, body), (200, Value::Null));
                } else {
                    after_wrong += 1;
                }
                if after_wrong == 3 {
                    post(&http, format!("{}/interrupt", fake.url()), json!({"prompt_id": "run"})).await;
                }
            }
            "execution_interrupted" => break m,
            "execution_success" | "execution_error" => panic!("prompt ended without the interrupt: {m}"),
            _ => {}
        }
    };
    assert!(after_wrong >= 3, "the wrong id stopped the prompt after {after_wrong} ticks");
    let d = &interrupted["data"];
    assert_eq!(
        (d["prompt_id"].as_str(), d["node_id"].as_str(), d["node_type"].as_str()),
        (Some("run"), Some("2"), Some("KSampler"))
    );
    assert_eq!(d["executed"], json!(["1"]));
    let rest: Vec<String> = until_done(&mut ws, "run").await.iter().map(summary).collect();
    assert_eq!(rest, ["status 0", "executing null"]);
    let entry = &get(format!("{}/history/run", fake.url())).await["run"];
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);
    assert_eq!(entry["status"]["messages"].as_array().unwrap().last().unwrap()[0], "execution_interrupted");
    assert_eq!(fake.interrupts(), [Some("not-running".to_string()), Some("run".to_string())]);
}

#[tokio::test]
async fn queue_delete_removes_a_pending_prompt_only() {
    let fake = FakeComfy::start(Behaviour { step_delay: Duration::from_millis(20), ..Default::default() }).await;
    let http = reqwest::Client::new();
    let url = fake.url();
    let (_, a) = post(&http, format!("{url}/prompt"), json!({"prompt": workflow(100), "prompt_id": "a"})).await;
    let (_, b) = post(&http, format!("{url}/prompt"), json!({"prompt": workflow(1), "prompt_id": "b"})).await;
    assert_eq!((a["number"].clone(), b["number"].clone()), (json!(0), json!(1)));
    let mut queue = get(format!("{url}/queue")).await;
    for _ in 0..100 {
        if queue["queue_running"].as_array().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue = get(format!("{url}/queue")).await;
    }
    assert_eq!(queue["queue_running"][0][1], "a", "{queue}");
    let pending = &queue["queue_pending"][0];
    assert_eq!(pending.as_array().unwrap().len(), 5);
    assert_eq!((pending[0].clone(), pending[1].clone(), pending[4].clone()), (json!(1), json!("b"), json!(["3"])));
    assert_eq!(get(format!("{url}/prompt")).await, json!({"exec_info": {"queue_remaining": 2}}));

    // Deleting the running one does nothing; deleting the pending one removes it.
    post(&http, format!("{url}/queue"), json!({"delete": ["a", "b"]})).await;
    let queue = get(format!("{url}/queue")).await;
    assert_eq!(queue["queue_pending"], json!([]));
    assert_eq!(queue["queue_running"][0][1], "a");
    assert_eq!(fake.deleted(), ["a", "b"]);

    // A global interrupt (no body) ends `a`; `b` never runs.
    let r = http.post(format!("{url}/interrupt")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..200 {
        if fake.history("a").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.history("a").unwrap()["status"]["status_str"], "error");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(format!("{url}/history/b")).await, json!({}));
    assert_eq!(fake.interrupts(), [None]);
}

#[tokio::test]
async fn validation_errors_have_comfyui_shapes() {
    let fake = FakeComfy::start(Behaviour { reject: Some(Reject::new("1", "image")), ..Default::default() }).await;
    let http = reqwest::Client::new();
    let url = format!("{}/prompt", fake.url());

    let (s, body) = post(&http, url.clone(), json!({"client_id": "x"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}})
    );

    let (s, body) = post(&http, url.clone(), json!({"prompt": {"1": {"inputs": {}}}})).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"]["type"], "invalid_prompt");
    assert_eq!(body["error"]["details"], "Node ID '#1'");

    let (s, body) =
        post(&http, url.clone(), json!({"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}})).await;
    assert_eq!((s, body["error"]["type"].as_str()), (400, Some("prompt_no_outputs")));

    let prompt = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    });
    let (s, body) = post(&http, url.clone(), json!({"prompt": prompt})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({
            "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {
                "errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "image: 'missing.png' not in []",
                            "extra_info": {"input_name": "image", "input_config": [[], {"image_upload": true}], "received_value": "missing.png"}}],
                "dependent_outputs": ["2"],
                "class_type": "LoadImage",
            }},
        })
    );
    // A failed validation queues nothing, but the `number` counter has moved on for every POST.
    fake.set_behaviour(Behaviour::default());
    let (s, body) = post(&http, url, json!({"prompt": prompt})).await;
    assert_eq!((s, body["number"].clone()), (200, json!(4)));
    assert_eq!(fake.prompts().len(), 5);
}

#[tokio::test]
async fn api_prefix_unknown_history_and_tables() {
    let fake = FakeComfy::start(Behaviour::default()).await;
    let url = fake.url();
    assert_eq!(get(format!("{url}/api/history/never-seen")).await, json!({}));
    assert_eq!(get(format!("{url}/api/queue")).await, json!({"queue_running": [], "queue_pending": []}));
    let stats = get(format!("{url}/api/system_stats")).await;
    assert_eq!(stats["system"]["comfyui_version"], "0.8.0");
    assert_eq!(stats["devices"][0]["type"], "cpu");
    assert!(stats["devices"][0]["index"].is_null());
    let info = get(format!("{url}/api/object_info/KSampler")).await;
    assert!(info["KSampler"]["input"]["required"]["sampler_name"][0].as_array().unwrap().contains(&json!("euler")));
    let video = get(format!("{url}/object_info/SaveVideo")).await;
    assert_eq!(video["SaveVideo"]["input"]["required"]["format"][0], "COMBO");
    assert_eq!(video["SaveVideo"]["input"]["required"]["format"][1]["options"], json!(["auto", "mp4"]));
    assert_eq!(get(format!("{url}/object_info/NoSuchNode")).await, json!({}));
    let missing = reqwest::get(format!("{url}/api/nothing-here")).await.unwrap();
    assert_eq!(missing.status(), 404);

    // `/api/ws` without a clientId: a 32-hex sid; the feature-flag handshake is answered.
    let mut ws = connect(&format!("ws://{}/api/ws", url.trim_start_matches("http://"))).await;
    let mut binary = Vec::new();
    let hello = next_json(&mut ws, &mut binary).await;
    let sid = hello["data"]["sid"].as_str().unwrap();
    assert!(sid.len() == 32 && sid.chars().all(|c| c.is_ascii_hexdigit()), "{sid}");
    use futures_util::SinkExt;
    ws.send(Message::Text(r#"{"type": "feature_flags", "data": {"supports_preview_metadata": true}}"#.into()))
        .await
        .unwrap();
    let flags = next_json(&mut ws, &mut binary).await;
    assert_eq!(flags["type"], "feature_flags");
    assert_eq!(flags["data"]["supports_preview_metadata"], true);

    let (s, _) =
        post(&reqwest::Client::new(), format!("{url}/api/prompt"), json!({"prompt": workflow(1), "prompt_id": "q"}))
            .await;
    assert_eq!(s, 200);
    // No client_id: no per-prompt events for anyone except progress (sent to all) and status.
    let mut kinds = Vec::new();
    loop {
        let m = next_json(&mut ws, &mut binary).await;
        kinds.push(summary(&m));
        if m["type"] == "status" && m["data"]["status"]["exec_info"]["queue_remaining"] == 0 {
            break;
        }
    }
    assert!(kinds.iter().all(|k| k.starts_with("status") || k.starts_with("progress")), "{kinds:?}");
    assert!(kinds.contains(&"progress 2 1/1".to_string()), "{kinds:?}");
    assert_eq!(fake.history("q").unwrap()["status"]["status_str"], "success");
}

#[tokio::test]
async fn restart_forgets_queue_and_history_and_drops_sockets() {
    let fake = FakeComfy::start(Behaviour::default()).await;
    let http = reqwest::Client::new();
    let mut ws = connect(&fake.ws_url("c3")).await;
    let mut binary = Vec::new();
    next_json(&mut ws, &mut binary).await;
    post(&http, format!("{}/prompt", fake.url()), json!({"prompt": workflow(2), "client_id": "c3", "prompt_id": "r1"}))
        .await;
    until_done(&mut ws, "r1").await;
    assert!(get(format!("{}/history", fake.url())).await.get("r1").is_some());

    fake.restart();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_) | Message::Binary(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the socket stays open after a restart");
    assert!(!matches!(end, Some(Ok(Message::Close(_)))), "a restart sends no close frame: {end:?}");
    assert_eq!(get(format!("{}/history/r1", fake.url())).await, json!({}));
    assert_eq!(get(format!("{}/history", fake.url())).await, json!({}));
    // Files are on disk and survive.
    let view = reqwest::get(format!("{}/view?filename=smoke_00001_.png&type=output", fake.url())).await.unwrap();
    assert_eq!(view.status(), 200);
    // The counter starts again.
    let (_, answer) = post(&http, format!("{}/prompt", fake.url()), json!({"prompt": workflow(1)})).await;
    assert_eq!(answer["number"], 0);
}

#[tokio::test]
async fn faults_failure_dropped_socket_hang_and_seeded_history() {
    let oom = Behaviour { fail: Some(Failure::oom(At::new("2", 2))), ..Default::default() };
    let fake = FakeComfy::start(oom).await;
    let http = reqwest::Client::new();
    let url = fake.url();
    let mut ws = connect(&fake.ws_url("c4")).await;
    let mut binary = Vec::new();
    next_json(&mut ws, &mut binary).await;

    // Order B: execution_error after the second tick, then status and executing{node:null}.
    post(&http, format!("{url}/prompt"), json!({"prompt": workflow(5), "client_id": "c4", "prompt_id": "oom"})).await;
    let seen = until_done(&mut ws, "oom").await;
    let lines: Vec<String> = seen.iter().map(summary).collect();
    let n = lines.len();
    assert_eq!(
        &lines[n - 5..],
        [
            "progress_state 1=finished(1.0/1.0) 2=running(2/5)",
            "progress 2 2/5",
            "execution_error",
            "status 0",
            "executing null"
        ]
    );
    let error = &seen[n - 3]["data"];
    assert_eq!(error["exception_type"], "torch.OutOfMemoryError");
    assert!(
        error["exception_message"]
            .as_str()
            .unwrap()
            .starts_with("Allocation on device \nThis error means you ran out of memory")
    );
    assert_eq!(
        (error["node_id"].clone(), error["node_type"].clone(), error["executed"].clone()),
        (json!("2"), json!("KSampler"), json!(["1"]))
    );
    assert_eq!(error["current_inputs"]["steps"], json!([5]));
    assert_eq!(fake.history("oom").unwrap()["status"]["status_str"], "error");

    // The socket drops mid-prompt; the prompt still finishes into history.
    fake.set_behaviour(Behaviour { close_websockets_at: Some(At::new("2", 1)), ..Default::default() });
    post(&http, format!("{url}/prompt"), json!({"prompt": workflow(3), "client_id": "c4", "prompt_id": "drop"})).await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Text(_) | Message::Binary(_))) = ws.next().await {
                continue;
            }
            return;
        }
    })
    .await;
    assert!(end.is_ok(), "the socket was not dropped");
    for _ in 0..200 {
        if fake.history("drop").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.history("drop").expect("dropped socket, prompt still done")["status"]["status_str"], "success");

    // A hang: running forever, /interrupt ignored, nothing in history until a restart.
    fake.set_behaviour(Behaviour { hang_at: Some(At::new("2", 1)), ..Default::default() });
    post(&http, format!("{url}/prompt"), json!({"prompt": workflow(3), "prompt_id": "hang"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    post(&http, format!("{url}/interrupt"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.running().as_deref(), Some("hang"));
    assert!(fake.history("hang").is_none());
    fake.restart();
    assert_eq!(fake.running(), None);

    // A seeded entry (a redelivered job finds its prompt) with its files.
    fake.set_behaviour(Behaviour {
        outputs: [("3".to_string(), OutputFile::bytes(&b"mp4 bytes"[..]))].into(),
        ..Default::default()
    });
    let video = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 8, "color": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8.0}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/job", "format": "mp4", "codec": "h264"}},
    });
    fake.seed_history("seeded", video);
    let entry = &get(format!("{url}/history/seeded")).await["seeded"];
    let file = json!({"filename": "job_00001_.mp4", "subfolder": "video", "type": "output"});
    assert_eq!(entry["outputs"]["3"], json!({"images": [file], "animated": [true]}));
    let view = reqwest::get(format!("{url}/view?filename=job_00001_.mp4&subfolder=video&type=output")).await.unwrap();
    assert_eq!(view.headers()["content-type"], "video/mp4");
    assert_eq!(&view.bytes().await.unwrap()[..], b"mp4 bytes");
}

#[tokio::test]
async fn uploads_and_ranged_views() {
    let fake = FakeComfy::start(Behaviour::default()).await;
    let http = reqwest::Client::new();
    let url = fake.url();
    let upload = |bytes: &'static [u8]| {
        let form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(bytes).file_name("frame.png"))
            .text("type", "input");
        http.post(format!("{url}/upload/image")).multipart(form).send()
    };
    let r = upload(b"one").await.unwrap();
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.unwrap();
    assert_eq!(first, json!({"name": "frame.png", "subfolder": "", "type": "input"}));
    let same: Value = upload(b"one").await.unwrap().json().await.unwrap();
    assert_eq!(same["name"], "frame.png");
    let other: Value = upload(b"two").await.unwrap().json().await.unwrap();
    assert_eq!(other["name"], "frame (1).png");
    assert_eq!(fake.uploads().len(), 3);
    let info = get(format!("{url}/object_info/LoadImage")).await;
    assert_eq!(info["LoadImage"]["input"]["required"]["image"][0], json!(["frame (1).png", "frame.png"]));

    let ranged = http
        .get(format!("{url}/view?filename=frame%20(1).png&type=input"))
        .header("Range", "bytes=1-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.headers()["content-range"], "bytes 1-2/3");
    assert_eq!(&ranged.bytes().await.unwrap()[..], b"wo");
    let bad = reqwest::get(format!("{url}/view?filename=../etc/passwd")).await.unwrap();
    assert_eq!(bad.status(), 400);

    // Slow and oversized: 10 chunks of 1 KiB, 5 ms apart, no Content-Length.
    let view = View { chunk: 1024, delay: Duration::from_millis(5), inflate_to: Some(10_240), content_length: false };
    fake.set_behaviour(Behaviour { view, ..Default::default() });
    let started = std::time::Instant::now();
    let big = reqwest::get(format!("{url}/view?filename=frame.png&type=input")).await.unwrap();
    assert!(big.headers().get("content-length").is_none());
    let body = big.bytes().await.unwrap();
    assert_eq!(body.len(), 10_240);
    assert!(body.starts_with(b"one\0"));
    assert!(started.elapsed() >= Duration::from_millis(50), "{:?}", started.elapsed());
}

#[tokio::test]
async fn cached_nodes_and_a_restart_mid_prompt() {
    let fake = FakeComfy::start(Behaviour { cached: vec!["1".into(), "3".into()], ..Default::default() }).await;
    let http = reqwest::Client::new();
    let mut ws = connect(&fake.ws_url("c5")).await;
    let mut binary = Vec::new();
    next_json(&mut ws, &mut binary).await;
    post(&http, format!("{}/prompt", fake.url()), json!({"prompt": workflow(1), "client_id": "c5", "prompt_id": "c"}))
        .await;
    let lines: Vec<String> = until_done(&mut ws, "c").await.iter().map(summary).collect();
    // A cached intermediate node is never visited; a cached output node sends `executed` but no `executing`.
    assert_eq!(
        lines,
        [
            "status 1",
            "status 1",
            "execution_start",
            "execution_cached [\"1\",\"3\"]",
            "progress_state 2=running(0.0/1.0)",
            "executing 2",
            "progress_state 2=running(1/1)",
            "progress 2 1/1",
            "progress_state 2=finished(1/1)",
            "executed 3",
            "progress_state 2=finished(1/1) 3=finished(1/1)",
            "execution_success",
            "status 0",
            "executing null",
        ]
    );

    // The server restarts in the middle of the next prompt: it is in neither queue nor history.
    fake.set_behaviour(Behaviour { restart_at: Some(At::new("2", 2)), ..Default::default() });
    post(
        &http,
        format!("{}/prompt", fake.url()),
        json!({"prompt": workflow(4), "client_id": "c5", "prompt_id": "lost"}),
    )
    .await;
    let mut ticks = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("socket not dropped") {
            Some(Ok(Message::Text(t))) => ticks += usize::from(t.contains("\"progress\"")),
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert_eq!(ticks, 2);
    assert_eq!(get(format!("{}/history/lost", fake.url())).await, json!({}));
    assert_eq!(get(format!("{}/queue", fake.url())).await, json!({"queue_running": [], "queue_pending": []}));
}
