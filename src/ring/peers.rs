//! The connections of a ring: every worker keeps one listener for its
//! whole life; each attempt, a member dials its successor and takes the
//! connection its predecessor dialled from the listener, matched by the
//! attempt's epoch and the predecessor's id and proven by the attempt's
//! key. A connection can arrive before its attempt is here (the
//! predecessor finished its shard first): it waits in the listener.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::fault::{LinkFault, RingFaultKind};
use super::frame::{Hello, KEY_BYTES};
use super::shm::{self, Outbox, View};

/// At most this many connections wait for their attempt; older ones go.
const MAX_WAITING: usize = 64;
/// A waiting connection nobody claimed within this is dropped.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The hello must arrive within this of the connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

struct Waiting {
    hello: Hello,
    stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
struct Inbox {
    waiting: Mutex<VecDeque<Waiting>>,
    arrived: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This worker's ring listener.
pub struct PeerListener {
    endpoint: String,
    inbox: Arc<Inbox>,
    accept: tokio::task::JoinHandle<()>,
    /// The ring's frame buffers between attempts: the listener lives as
    /// long as the worker, so a step reuses the last one's memory.
    frames: Mutex<Vec<Vec<u8>>>,
    /// Where this worker's shared-memory outbox lives and its
    /// predecessors' are mapped from (None: every link on TCP).
    shm_dir: Option<PathBuf>,
    /// This worker's outbox (none until a ring offers one; out while an
    /// attempt uses it), and the predecessor's outbox last mapped.
    outbox: Mutex<Option<Outbox>>,
    view: Mutex<Option<View>>,
    /// How the last attempt's links carried their bytes: from the
    /// predecessor, to the successor (bit 0, 1: shared memory).
    last_links: std::sync::atomic::AtomicU8,
}

impl std::fmt::Debug for PeerListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerListener").field("endpoint", &self.endpoint).finish()
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl PeerListener {
    /// Listens on `addr` (port 0: any free port); `endpoint` is what the
    /// neighbours are told to dial (see [`advertised_endpoint`]).
    pub async fn bind(addr: &str, endpoint: impl FnOnce(SocketAddr) -> String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let endpoint = endpoint(listener.local_addr()?);
        let inbox = Arc::new(Inbox::default());
        let accept = tokio::spawn(accept_loop(listener, inbox.clone()));
        let shm_dir = match std::env::var_os("DDPM_RING_SHM_DIR") {
            Some(d) if d.is_empty() => None,
            Some(d) => Some(PathBuf::from(d)),
            None => Some(PathBuf::from(shm::DEFAULT_DIR)).filter(|d| d.is_dir()),
        };
        // What workers killed on this host left behind.
        if let Some(d) = &shm_dir {
            shm::sweep(d);
        }
        Ok(Self {
            endpoint,
            inbox,
            accept,
            frames: Mutex::default(),
            shm_dir,
            outbox: Mutex::default(),
            view: Mutex::default(),
            last_links: Default::default(),
        })
    }

    /// Where shared-memory links live for this worker (`DDPM_RING_SHM_DIR`,
    /// default /dev/shm; set empty for none).
    pub fn shm_dir(&self) -> Option<&Path> {
        self.shm_dir.as_deref()
    }

    /// This worker's outbox with room for `slots` frames of `slot_bytes`,
    /// made when there is none that fits; `None` when shared memory is off,
    /// in use by another attempt, or cannot be had (full, say: logged).
    pub fn take_outbox(&self, slots: usize, slot_bytes: usize) -> Option<Outbox> {
        let dir = self.shm_dir.as_deref()?;
        let mut kept = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = kept.take().filter(|o| o.fits(slots, slot_bytes)) {
            return Some(o);
        }
        match Outbox::create(dir, slots, slot_bytes) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), slots, slot_bytes, "ring links stay on TCP: no shared-memory outbox: {e}");
                None
            }
        }
    }

    /// Keeps `outbox` for the next attempt.
    pub fn keep_outbox(&self, outbox: Option<Outbox>) {
        if outbox.is_some() {
            *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = outbox;
        }
    }

    pub fn set_last_links(&self, from_shm: bool, to_shm: bool) {
        self.last_links.store(from_shm as u8 | (to_shm as u8) << 1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How the last attempt's links carried the bytes, "from/to":
    /// `shm` or `tcp` each.
    pub fn last_links(&self) -> &'static str {
        match self.last_links.load(std::sync::atomic::Ordering::Relaxed) {
            0 => "tcp/tcp",
            1 => "shm/tcp",
            2 => "tcp/shm",
            _ => "shm/shm",
        }
    }

    /// The predecessor's outbox as last mapped, if any.
    pub fn take_view(&self) -> Option<View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn keep_view(&self, view: Option<View>) {
        if view.is_some() {
            *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
        }
    }

    /// The frame buffers kept from earlier attempts (empty while another
    /// attempt of this worker holds them).
    pub fn take_frames(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.frames.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keeps `frames` for the next attempt.
    pub fn keep_frames(&self, frames: Vec<Vec<u8>>) {
        *self.frames.lock().unwrap_or_else(|p| p.into_inner()) = frames;
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The connection worker `from` dialled for attempt `epoch`, waiting
    /// up to `timeout` for it. A connection that names the attempt but not
    /// its key is dropped (and named in the log): to the ring, a
    /// predecessor that never proved itself did not connect.
    pub async fn accept_from(&self, epoch: u64, key: &[u8; KEY_BYTES], from: u64, timeout: Duration) -> Result<TcpStream, LinkFault> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.inbox.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut waiting = self.inbox.lock();
                waiting.retain(|w| w.since.elapsed() < MAX_WAIT);
                while let Some(i) = waiting.iter().position(|w| w.hello.epoch == epoch && w.hello.from == from) {
                    let w = waiting.remove(i).expect("found");
                    if subtle::ConstantTimeEq::ct_eq(&w.hello.key[..], &key[..]).into() {
                        return Ok(w.stream);
                    }
                    let peer = w.stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::warn!(%peer, epoch, from, "refusing a ring connection with the wrong key");
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(LinkFault::new(RingFaultKind::NotConnected, format!("did not connect within {:.1} s", timeout.as_secs_f64())));
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, inbox: Arc<Inbox>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!("ring listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HELLO_TIMEOUT, Hello::read(&mut stream)).await {
                Ok(Ok(hello)) => {
                    let mut waiting = inbox.lock();
                    if waiting.len() >= MAX_WAITING {
                        waiting.pop_front();
                    }
                    waiting.push_back(Waiting { hello, stream, since: Instant::now() });
                    drop(waiting);
                    inbox.arrived.notify_waiters();
                }
                Ok(Err(e)) => tracing::warn!(%peer, "ring listener: refused a connection that {e}"),
                Err(_) => tracing::warn!(%peer, "ring listener: refused a connection that sent no hello within {HELLO_TIMEOUT:?}"),
            }
        });
    }
}

/// Dials a member's listener at `endpoint` and says `hello`; retries a
/// refused connection until `timeout`.
pub async fn connect(endpoint: &str, hello: &Hello, timeout: Duration) -> Result<TcpStream, LinkFault> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match tokio::time::timeout_at(deadline, TcpStream::connect(endpoint)).await {
            Ok(Ok(mut s)) => {
                let _ = s.set_nodelay(true);
                s.write_all(&hello.encode()).await.map_err(|e| LinkFault::io(&format!("at {endpoint} did not take its hello"), &e))?;
                return Ok(s);
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let why = format!("could not be reached at {endpoint} within {:.1} s: {last}", timeout.as_secs_f64());
            return Err(LinkFault::new(RingFaultKind::Unreachable, why));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The endpoint to advertise for a listener bound at `bound`: `advertise`
/// as given (`HOST:PORT`, or `HOST` for the bound port); else the bound
/// address, with an unspecified IP (0.0.0.0, ::) replaced by the local
/// address this machine uses to reach `coord` (`HOST:PORT`).
pub fn advertised_endpoint(bound: SocketAddr, advertise: Option<&str>, coord: &str) -> String {
    if let Some(a) = advertise.filter(|a| !a.is_empty()) {
        return if a.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !a.ends_with(']') {
            a.to_string()
        } else {
            format!("{a}:{}", bound.port())
        };
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let coord = coord.trim_start_matches("https://").trim_start_matches("http://");
    // A UDP "connect" sends nothing; it only asks the kernel for the route.
    let local = std::net::ToSocketAddrs::to_socket_addrs(coord).ok().and_then(|mut a| a.next()).and_then(|target| {
        let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let s = std::net::UdpSocket::bind(any).ok()?;
        s.connect(target).ok()?;
        s.local_addr().ok()
    });
    match local {
        Some(l) => SocketAddr::new(l.ip(), bound.port()).to_string(),
        None => SocketAddr::new([127, 0, 0, 1].into(), bound.port()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dialled_connection_is_claimed_by_epoch_sender_and_key() {
        let l = PeerListener::bind("127.0.0.1:0", |a| a.to_string()).await.unwrap();
        let key = [5u8; KEY_BYTES];
        // Wrong key first, then the right one: only the right one is handed over.
        let _bad = connect(l.endpoint(), &Hello { epoch: 1, from: 9, key: [6; KEY_BYTES] }, Duration::from_secs(5)).await.unwrap();
        let _good = connect(l.endpoint(), &Hello { epoch: 1, from: 9, key }, Duration::from_secs(5)).await.unwrap();
        l.accept_from(1, &key, 9, Duration::from_secs(5)).await.unwrap();
        // Nothing more for that attempt, nor for another.
        let e = l.accept_from(1, &key, 9, Duration::from_millis(200)).await.unwrap_err();
        assert!(e.kind == RingFaultKind::NotConnected && e.detail.contains("did not connect"), "{e}");
        assert!(l.accept_from(2, &key, 9, Duration::from_millis(100)).await.is_err());
    }

    #[test]
    fn the_advertised_endpoint_is_reachable_from_the_coordinators_side() {
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(advertised_endpoint(bound, Some("10.0.0.5"), "x:1"), "10.0.0.5:4000");
        assert_eq!(advertised_endpoint(bound, Some("pod-a.svc:7000"), "x:1"), "pod-a.svc:7000");
        assert_eq!(advertised_endpoint(bound, None, "127.0.0.1:50051"), "127.0.0.1:4000");
        assert_eq!(advertised_endpoint("127.0.0.1:4001".parse().unwrap(), None, "10.1.1.1:5"), "127.0.0.1:4001");
    }
}
