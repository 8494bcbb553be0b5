//! A TCP proxy in front of the S3 server whose faults are switched while it runs: `Pass`, `Blackhole`
//! (connections are accepted and read, and never answered — also the ones that were open when it began,
//! for as long as they stay open), `Latency` (each chunk, either way, waits), `Reset` (a connection that
//! carries more than N bytes after the mode was set is reset, mid-stream). It also reports the HTTP/1.1
//! request lines and status lines it forwards, so a test can act at the moment a worker starts or
//! finishes an upload.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, watch};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Latency(Duration),
    /// Reset a connection once it has carried this many bytes (both ways) since the mode was set.
    Reset {
        after_bytes: u64,
    },
}

/// Traffic the proxy saw: the first line of a request, or the status line of its answer.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which proxy (the index it was started with).
    pub proxy: usize,
    pub conn: u64,
    pub method: String,
    pub target: String,
    /// `None` for the request itself, the status for its answer.
    pub status: Option<u16>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<(u64, Mode)>,
    seen: broadcast::Sender<Seen>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (`host:port`).
    pub async fn start(index: usize, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel((0, Mode::Pass));
        let (seen, _) = broadcast::channel(4096);
        let modes = mode.subscribe();
        let seen_tx = seen.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                next += 1;
                let conn = Conn { proxy: index, id: next, modes: modes.clone(), seen: seen_tx.clone() };
                tokio::spawn(conn.serve(client, upstream));
            }
        });
        FaultProxy { addr, mode, seen, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_modify(|(generation, m)| {
            *generation += 1;
            *m = mode;
        });
    }

    pub fn mode(&self) -> Mode {
        self.mode.borrow().1.clone()
    }

    pub fn observe(&self) -> broadcast::Receiver<Seen> {
        self.seen.subscribe()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Conn {
    proxy: usize,
    id: u64,
    modes: watch::Receiver<(u64, Mode)>,
    seen: broadcast::Sender<Seen>,
}

/// What both directions of one connection share.
#[derive(Default)]
struct State {
    /// Swallowed by a blackhole: nothing is forwarded any more, either way.
    black: AtomicBool,
    /// The mode generation the byte count below belongs to.
    counted_generation: AtomicU64,
    carried: AtomicU64,
    reset: AtomicBool,
    done: Notify,
    /// The request whose answer comes next (HTTP/1.1 keeps them in order on a connection).
    request: Mutex<Option<(String, String)>>,
}

#[derive(Clone, Copy)]
enum Way {
    Up,
    Down,
}

impl Conn {
    async fn serve(self, mut client: TcpStream, upstream: SocketAddr) {
        let _ = client.set_nodelay(true);
        if self.modes.borrow().1 == Mode::Blackhole {
            // Accept and read, never answer, never reach the server.
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            return;
        }
        let Ok(mut server) = TcpStream::connect(upstream).await else { return };
        let _ = server.set_nodelay(true);
        let state = State::default();
        {
            let (cr, cw) = client.split();
            let (sr, sw) = server.split();
            tokio::join!(self.pump(cr, sw, Way::Up, &state), self.pump(sr, cw, Way::Down, &state));
        }
        if state.reset.load(Ordering::SeqCst) {
            // A reset, not a clean close: RST on both sides.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }

    async fn pump(
        &self,
        mut from: tokio::net::tcp::ReadHalf<'_>,
        mut to: tokio::net::tcp::WriteHalf<'_>,
        way: Way,
        state: &State,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => r.unwrap_or(0),
                _ = state.done.notified() => return,
            };
            if n == 0 {
                let _ = to.shutdown().await;
                return;
            }
            let chunk = &buf[..n];
            self.sniff(way, chunk, state);
            let (generation, mode) = self.modes.borrow().clone();
            if state.black.load(Ordering::SeqCst) {
                continue;
            }
            match mode {
                Mode::Pass => {}
                Mode::Blackhole => {
                    state.black.store(true, Ordering::SeqCst);
                    continue;
                }
                Mode::Latency(d) => tokio::time::sleep(d).await,
                Mode::Reset { after_bytes } => {
                    if state.counted_generation.swap(generation, Ordering::SeqCst) != generation {
                        state.carried.store(0, Ordering::SeqCst);
                    }
                    let before = state.carried.fetch_add(n as u64, Ordering::SeqCst);
                    if before + n as u64 > after_bytes {
                        let keep = after_bytes.saturating_sub(before) as usize;
                        let _ = to.write_all(&chunk[..keep.min(n)]).await;
                        state.reset.store(true, Ordering::SeqCst);
                        state.done.notify_waiters();
                        state.done.notify_one();
                        return;
                    }
                }
            }
            if to.write_all(chunk).await.is_err() {
                state.done.notify_waiters();
                state.done.notify_one();
                return;
            }
        }
    }

    /// Reports request lines going up and status lines coming down (a chunk that starts one).
    fn sniff(&self, way: Way, chunk: &[u8], state: &State) {
        let line = chunk.split(|b| *b == b'\r').next().unwrap_or_default();
        let Ok(line) = std::str::from_utf8(line) else { return };
        match way {
            Way::Up => {
                let mut parts = line.split(' ');
                let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
                    return;
                };
                if !version.starts_with("HTTP/1.") || !["GET", "PUT", "POST", "HEAD", "DELETE"].contains(&method) {
                    return;
                }
                *state.request.lock().unwrap() = Some((method.to_string(), target.to_string()));
                let _ = self.seen.send(Seen {
                    proxy: self.proxy,
                    conn: self.id,
                    method: method.to_string(),
                    target: target.to_string(),
                    status: None,
                });
            }
            Way::Down => {
                let Some(rest) = line.strip_prefix("HTTP/1.1 ") else { return };
                let Some(status) = rest.split(' ').next().and_then(|s| s.parse().ok()) else { return };
                let Some((method, target)) = state.request.lock().unwrap().take() else { return };
                let _ = self.seen.send(Seen { proxy: self.proxy, conn: self.id, method, target, status: Some(status) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk it reads with the same bytes.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(proxy: &FaultProxy, msg: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(proxy.addr()).await?;
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(r) => r.map(|_| got),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")),
        }
    }

    #[tokio::test]
    async fn modes_switch_at_run_time() {
        let proxy = FaultProxy::start(0, echo().await).await;
        let mut seen = proxy.observe();
        let t = Duration::from_secs(2);
        assert_eq!(roundtrip(&proxy, b"GET /b/k HTTP/1.1\r\n\r\n", t).await.unwrap(), b"GET /b/k HTTP/1.1\r\n\r\n");
        let s = seen.recv().await.unwrap();
        assert_eq!((s.method.as_str(), s.target.as_str(), s.status), ("GET", "/b/k", None));

        proxy.set_mode(Mode::Blackhole);
        let err = roundtrip(&proxy, b"hello", Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);

        proxy.set_mode(Mode::Latency(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert_eq!(roundtrip(&proxy, b"slow", t).await.unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

        proxy.set_mode(Mode::Reset { after_bytes: 3 });
        assert!(roundtrip(&proxy, b"cut mid-stream", t).await.is_err());

        proxy.set_mode(Mode::Pass);
        assert_eq!(roundtrip(&proxy, b"back", t).await.unwrap(), b"back");
    }
}
