//! `GET /ws?clientId=`: the first frame is `status` with `sid`; a client whose prompt is running gets
//! `executing{node}` next; a first text frame `feature_flags` is answered with the server's features;
//! every other frame from the client is ignored. No heartbeat pings.
//!
//! A second connection with the same `clientId` takes over the sid; the old one stays open but receives
//! nothing. As in `server.py`, when any connection closes its cleanup removes the sid from the table,
//! even if a newer connection holds it by then.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State as Extract};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::Shared;
use super::pyjson;
use super::routes::server_features;
use super::state::{Conn, Frame};

pub(crate) async fn handler(
    Extract(shared): Extract<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let client_id = q.get("clientId").cloned().unwrap_or_default();
    upgrade.on_upgrade(move |socket| serve(shared, client_id, socket))
}

async fn serve(shared: Arc<Shared>, client_id: String, socket: WebSocket) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (conn_id, sid) = {
        let mut st = shared.lock();
        let sid = if client_id.is_empty() { uuid::Uuid::new_v4().simple().to_string() } else { client_id };
        let conn = Conn { id: st.next_conn, tx: tx.clone() };
        st.next_conn += 1;
        st.sockets.insert(sid.clone(), conn.clone());
        st.conns.insert(conn.id, conn.clone());
        st.preview_metadata.insert(sid.clone(), false);
        st.record.ws_connects.push(sid.clone());
        let info = st.queue_info();
        st.send(Some(&sid), "status", json!({"status": info, "sid": sid}));
        if st.client_id.as_deref() == Some(sid.as_str())
            && let Some(node) = st.last_node_id.clone()
        {
            st.send(Some(&sid), "executing", json!({ "node": node }));
        }
        (conn.id, sid)
    };
    // Kept so that the channel stays open while this connection is out of the table (replaced).
    let _keep = tx;
    let (mut sink, mut stream) = socket.split();
    let mut first = true;
    let dropped = loop {
        tokio::select! {
            frame = rx.recv() => {
                let sent = match frame {
                    Some(Frame::Text(text)) => sink.send(Message::Text(text.into())).await,
                    Some(Frame::Binary(bytes)) => sink.send(Message::Binary(bytes.into())).await,
                    Some(Frame::Drop) | None => break true,
                };
                if sent.is_err() {
                    break false;
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    // Invalid JSON is logged and leaves `first_message` as it was.
                    let Ok(data) = serde_json::from_str::<Value>(&text) else { continue };
                    if first && data.get("type").and_then(Value::as_str) == Some("feature_flags") {
                        let wants = data.get("data").and_then(|d| d.get("supports_preview_metadata")) == Some(&Value::Bool(true));
                        shared.lock().preview_metadata.insert(sid.clone(), wants);
                        let reply = pyjson::to_string(&json!({"type": "feature_flags", "data": server_features()}));
                        if sink.send(Message::Text(reply.into())).await.is_err() {
                            break false;
                        }
                    }
                    first = false;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break false,
            },
        }
    };
    if !dropped {
        let mut st = shared.lock();
        st.sockets.remove(&sid);
        st.preview_metadata.remove(&sid);
        st.conns.remove(&conn_id);
    }
}
