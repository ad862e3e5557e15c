//! Peer transport: QUIC (quinn) with mutual TLS.
//!
//! * SWIM packets and other unreliable messages go as QUIC datagrams; agreement messages (and
//!   any datagram too large for the path) go on a unidirectional stream each.
//! * Sending never waits: with no usable connection to a peer, a datagram is dropped (SWIM
//!   expects loss) and a reliable message is queued (a few per peer, oldest dropped first) while
//!   a connection attempt runs in the background, bounded by `CONNECT_TIMEOUT` and backed off
//!   after failures. A dead peer therefore never stalls messages to the others.
//! * At most `MAX_CONNECTIONS` connections are kept; the least recently used goes first.
//! * Every connection is identified by the member its verified certificate names; everything
//!   it delivers is handed to the node as coming from that member, whatever the message claims.
//!
//! Counters (`TransportStats`) record what was sent, received and dropped, including every UDP
//! datagram that reached the port, so garbage is visible even when QUIC ignores it.

use super::Msg;
use super::certs::Tls;
use crate::node::Input;
use bytes::Bytes;
use peerfence_proto::{MAX_MESSAGE_BYTES, MemberId};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// Connections kept at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a QUIC handshake (LAN handshakes take about a millisecond).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// Reliable messages queued per peer while connecting.
pub const MAX_QUEUED_PER_PEER: usize = 32;
/// Datagrams kept per peer while connecting (the first SWIM announce to a member that just
/// started must not wait for the next announce round), and how fresh they must still be.
pub const MAX_DATAGRAMS_QUEUED_PER_PEER: usize = 8;
const DATAGRAM_QUEUE_MAX_AGE: Duration = Duration::from_secs(1);
/// Streams being written at once, per connection.
pub const MAX_STREAMS_IN_FLIGHT: usize = 64;
/// Time allowed to write or read one stream.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connection attempt, wait this long (doubling, up to the max) before the next.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Transport counters.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// UDP datagrams that reached the port (valid QUIC or not).
    pub udp_datagrams_in: AtomicU64,
    /// Bytes in them.
    pub udp_bytes_in: AtomicU64,
    /// UDP payload bytes sent (all QUIC traffic).
    pub udp_bytes_out: AtomicU64,
    /// QUIC datagrams sent.
    pub datagrams_out: AtomicU64,
    /// QUIC datagrams received from members.
    pub datagrams_in: AtomicU64,
    /// Streams (reliable messages) sent.
    pub streams_out: AtomicU64,
    /// Streams received from members.
    pub streams_in: AtomicU64,
    /// Messages dropped because no connection was usable.
    pub dropped_no_connection: AtomicU64,
    /// Reliable messages dropped from a full queue or a failed stream.
    pub dropped_reliable: AtomicU64,
    /// Received messages dropped because the node's inbox was full.
    pub dropped_inbox_full: AtomicU64,
    /// Connections accepted and identified.
    pub connections_in: AtomicU64,
    /// Connections established by us.
    pub connections_out: AtomicU64,
    /// Connections refused: failed handshakes (no or foreign certificate) or a certificate
    /// naming no member.
    pub handshakes_refused: AtomicU64,
    /// Connection attempts that failed or timed out.
    pub connect_failures: AtomicU64,
}

/// A snapshot of the counters, for the status view.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// See [`TransportStats`].
    pub udp_datagrams_in: u64,
    /// See [`TransportStats`].
    pub udp_bytes_in: u64,
    /// UDP payload bytes sent.
    pub udp_bytes_out: u64,
    /// See [`TransportStats`].
    pub datagrams_out: u64,
    /// See [`TransportStats`].
    pub datagrams_in: u64,
    /// See [`TransportStats`].
    pub streams_out: u64,
    /// See [`TransportStats`].
    pub streams_in: u64,
    /// See [`TransportStats`].
    pub dropped_no_connection: u64,
    /// See [`TransportStats`].
    pub dropped_reliable: u64,
    /// See [`TransportStats`].
    pub dropped_inbox_full: u64,
    /// See [`TransportStats`].
    pub connections_in: u64,
    /// See [`TransportStats`].
    pub connections_out: u64,
    /// See [`TransportStats`].
    pub handshakes_refused: u64,
    /// See [`TransportStats`].
    pub connect_failures: u64,
    /// Connections open now.
    pub connections_open: usize,
}

/// The connection to close when `open` holds more than `max`: the least recently used one other
/// than `keep` (the one just made).
fn lru_victim(
    open: &[(MemberId, Option<Instant>)],
    keep: MemberId,
    max: usize,
) -> Option<MemberId> {
    if open.len() <= max {
        return None;
    }
    open.iter()
        .filter(|(m, _)| *m != keep)
        .min_by_key(|(_, t)| *t)
        .map(|(m, _)| *m)
}

/// Counts every UDP datagram that reaches the socket, then lets quinn have it.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    stats: Arc<TransportStats>,
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        let r = self.inner.try_send(transmit);
        if r.is_ok() {
            self.stats
                .udp_bytes_out
                .fetch_add(transmit.contents.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let r = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &r {
            for m in meta.iter().take(*n) {
                let segments = if m.stride == 0 {
                    1
                } else {
                    m.len.div_ceil(m.stride)
                };
                self.stats
                    .udp_datagrams_in
                    .fetch_add(segments as u64, Ordering::Relaxed);
                self.stats
                    .udp_bytes_in
                    .fetch_add(m.len as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[derive(Default)]
struct PeerState {
    conn: Option<quinn::Connection>,
    last_used: Option<Instant>,
    connecting: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    queue: VecDeque<Bytes>,
    datagrams: VecDeque<(Instant, Bytes)>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    tls: Tls,
    addresses: Vec<SocketAddr>,
    peers: Mutex<HashMap<MemberId, PeerState>>,
    tx: Sender<Msg>,
    stats: Arc<TransportStats>,
    streams: Arc<tokio::sync::Semaphore>,
}

/// The transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport(Arc<Inner>);

fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(15))
            .unwrap_or(quinn::VarInt::from_u32(15_000).into()),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_STREAMS_IN_FLIGHT as u32));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    t
}

impl Transport {
    /// Binds `listen` and starts accepting members' connections. `addresses` are every
    /// member's address by id.
    pub fn bind(
        listen: SocketAddr,
        tls: Tls,
        addresses: Vec<SocketAddr>,
        tx: Sender<Msg>,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(TransportStats::default());
        let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(Arc::new(transport_config()));
        let quic_client = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
        client.transport_config(Arc::new(transport_config()));
        let socket = std::net::UdpSocket::bind(listen)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let wrapped = quinn::Runtime::wrap_udp_socket(&*runtime, socket)?;
        let counting: Arc<dyn AsyncUdpSocket> = Arc::new(CountingSocket {
            inner: wrapped,
            stats: stats.clone(),
        });
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            counting,
            runtime,
        )?;
        let t = Transport(Arc::new(Inner {
            endpoint,
            client,
            tls,
            addresses,
            peers: Mutex::new(HashMap::new()),
            tx,
            stats,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS_IN_FLIGHT * 4)),
        }));
        let acceptor = t.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok(t)
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.endpoint.local_addr()
    }

    /// Counter snapshot.
    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.0.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let open = self
            .0
            .peers
            .lock()
            .map(|p| p.values().filter(|s| s.conn.is_some()).count())
            .unwrap_or(0);
        StatsSnapshot {
            udp_datagrams_in: l(&s.udp_datagrams_in),
            udp_bytes_in: l(&s.udp_bytes_in),
            udp_bytes_out: l(&s.udp_bytes_out),
            datagrams_out: l(&s.datagrams_out),
            datagrams_in: l(&s.datagrams_in),
            streams_out: l(&s.streams_out),
            streams_in: l(&s.streams_in),
            dropped_no_connection: l(&s.dropped_no_connection),
            dropped_reliable: l(&s.dropped_reliable),
            dropped_inbox_full: l(&s.dropped_inbox_full),
            connections_in: l(&s.connections_in),
            connections_out: l(&s.connections_out),
            handshakes_refused: l(&s.handshakes_refused),
            connect_failures: l(&s.connect_failures),
            connections_open: open,
        }
    }

    /// Sends without waiting (see the module docs).
    pub fn send(&self, to: MemberId, bytes: Bytes, reliable: bool) {
        let conn = {
            let mut peers = self.0.peers.lock().unwrap_or_else(|p| p.into_inner());
            let p = peers.entry(to).or_default();
            match &p.conn {
                Some(c) if c.close_reason().is_none() => {
                    p.last_used = Some(Instant::now());
                    Some(c.clone())
                }
                _ => {
                    p.conn = None;
                    if reliable {
                        if p.queue.len() >= MAX_QUEUED_PER_PEER {
                            p.queue.pop_front();
                            self.0
                                .stats
                                .dropped_reliable
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        p.queue.push_back(bytes.clone());
                    } else {
                        if p.datagrams.len() >= MAX_DATAGRAMS_QUEUED_PER_PEER {
                            p.datagrams.pop_front();
                            self.0
                                .stats
                                .dropped_no_connection
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        p.datagrams.push_back((Instant::now(), bytes.clone()));
                    }
                    None
                }
            }
        };
        match conn {
            Some(c) => self.send_on(&c, bytes, reliable),
            None => self.ensure_connecting(to),
        }
    }

    fn send_on(&self, conn: &quinn::Connection, bytes: Bytes, reliable: bool) {
        let fits = conn
            .max_datagram_size()
            .is_some_and(|max| bytes.len() <= max);
        if !reliable && fits {
            match conn.send_datagram(bytes) {
                Ok(()) => {
                    self.0.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.0
                        .stats
                        .dropped_no_connection
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        // Reliable, or too large for a datagram on this path: a stream of its own.
        let Ok(permit) = self.0.streams.clone().try_acquire_owned() else {
            self.0
                .stats
                .dropped_reliable
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let conn = conn.clone();
        let stats = self.0.stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let sent = tokio::time::timeout(STREAM_TIMEOUT, async {
                let mut s = conn.open_uni().await.ok()?;
                s.write_all(&bytes).await.ok()?;
                s.finish().ok()
            })
            .await;
            match sent {
                Ok(Some(())) => stats.streams_out.fetch_add(1, Ordering::Relaxed),
                _ => stats.dropped_reliable.fetch_add(1, Ordering::Relaxed),
            };
        });
    }

    fn ensure_connecting(&self, to: MemberId) {
        let now = Instant::now();
        {
            let mut peers = self.0.peers.lock().unwrap_or_else(|p| p.into_inner());
            let p = peers.entry(to).or_default();
            if p.connecting || p.retry_at.is_some_and(|t| t > now) {
                return;
            }
            p.connecting = true;
        }
        let t = self.clone();
        tokio::spawn(async move { t.connect(to).await });
    }

    async fn connect(&self, to: MemberId) {
        let inner = &self.0;
        let result = async {
            let addr = *inner.addresses.get(to.index())?;
            let name = inner.tls.name(to)?.to_owned();
            let connecting = inner
                .endpoint
                .connect_with(inner.client.clone(), addr, &name)
                .ok()?;
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .ok()?
                .ok()?;
            // The server's certificate was verified for `name`; check it names `to` as well.
            (self.identify(&conn) == Some(to)).then_some(conn)
        }
        .await;
        match result {
            Some(conn) => {
                inner.stats.connections_out.fetch_add(1, Ordering::Relaxed);
                self.adopt(to, conn);
            }
            None => {
                inner.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                let mut peers = inner.peers.lock().unwrap_or_else(|p| p.into_inner());
                let p = peers.entry(to).or_default();
                p.connecting = false;
                p.backoff = (p.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                p.retry_at = Some(Instant::now() + p.backoff);
            }
        }
    }

    fn identify(&self, conn: &quinn::Connection) -> Option<MemberId> {
        let any = conn.peer_identity()?;
        let chain = any.downcast_ref::<Vec<rustls::pki_types::CertificateDer<'static>>>()?;
        self.0.tls.identify(chain)
    }

    /// Makes `conn` the connection to `member`, flushes its queue, and starts receiving on it.
    fn adopt(&self, member: MemberId, conn: quinn::Connection) {
        let (queued, fresh, evict) = {
            let mut peers = self.0.peers.lock().unwrap_or_else(|p| p.into_inner());
            let p = peers.entry(member).or_default();
            p.conn = Some(conn.clone());
            p.connecting = false;
            p.retry_at = None;
            p.backoff = Duration::ZERO;
            p.last_used = Some(Instant::now());
            let queued: Vec<Bytes> = p.queue.drain(..).collect();
            let fresh: Vec<Bytes> = p
                .datagrams
                .drain(..)
                .filter(|(at, _)| at.elapsed() <= DATAGRAM_QUEUE_MAX_AGE)
                .map(|(_, b)| b)
                .collect();
            // Bounded cache: close the least recently used connection beyond the limit.
            let open: Vec<(MemberId, Option<Instant>)> = peers
                .iter()
                .filter(|(_, s)| s.conn.is_some())
                .map(|(m, s)| (*m, s.last_used))
                .collect();
            let evict = lru_victim(&open, member, MAX_CONNECTIONS)
                .and_then(|m| peers.get_mut(&m).and_then(|s| s.conn.take()));
            (queued, fresh, evict)
        };
        if let Some(old) = evict {
            old.close(0u32.into(), b"connection cache full");
        }
        for bytes in queued {
            self.send_on(&conn, bytes, true);
        }
        for bytes in fresh {
            self.send_on(&conn, bytes, false);
        }
        let t = self.clone();
        let c = conn.clone();
        tokio::spawn(async move { t.read_datagrams(member, c).await });
        let t = self.clone();
        tokio::spawn(async move { t.read_streams(member, conn).await });
    }

    async fn accept_loop(&self) {
        while let Some(incoming) = self.0.endpoint.accept().await {
            let t = self.clone();
            tokio::spawn(async move {
                let conn = match tokio::time::timeout(STREAM_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    _ => {
                        t.0.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                match t.identify(&conn) {
                    Some(member) => {
                        t.0.stats.connections_in.fetch_add(1, Ordering::Relaxed);
                        t.adopt(member, conn);
                    }
                    None => {
                        t.0.stats.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                        conn.close(1u32.into(), b"certificate names no member");
                    }
                }
            });
        }
    }

    fn deliver(&self, from: MemberId, bytes: Bytes) {
        let msg = Msg::Input(Input::Datagram { from, bytes });
        if self.0.tx.try_send(msg).is_err() {
            self.0
                .stats
                .dropped_inbox_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn read_datagrams(&self, from: MemberId, conn: quinn::Connection) {
        while let Ok(bytes) = conn.read_datagram().await {
            self.0.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
            self.deliver(from, bytes);
        }
        self.forget(from, &conn);
    }

    async fn read_streams(&self, from: MemberId, conn: quinn::Connection) {
        while let Ok(mut stream) = conn.accept_uni().await {
            let t = self.clone();
            tokio::spawn(async move {
                let read =
                    tokio::time::timeout(STREAM_TIMEOUT, stream.read_to_end(MAX_MESSAGE_BYTES))
                        .await;
                if let Ok(Ok(bytes)) = read {
                    t.0.stats.streams_in.fetch_add(1, Ordering::Relaxed);
                    t.deliver(from, Bytes::from(bytes));
                }
            });
        }
        self.forget(from, &conn);
    }

    fn forget(&self, member: MemberId, conn: &quinn::Connection) {
        let mut peers = self.0.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = peers.get_mut(&member)
            && p.conn
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            p.conn = None;
        }
    }

    /// Waits (at most `limit`) for queued streams to go out, then closes everything.
    pub async fn close(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.0.streams.available_permits() < MAX_STREAMS_IN_FLIGHT * 4 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.0.endpoint.close(0u32.into(), b"leaving");
        let _ = tokio::time::timeout(limit, self.0.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_connection_goes_first() {
        let t0 = Instant::now();
        let at = |ms: u64| Some(t0 + Duration::from_millis(ms));
        let open = vec![
            (MemberId(1), at(30)),
            (MemberId(2), at(10)),
            (MemberId(3), at(20)),
        ];
        assert_eq!(lru_victim(&open, MemberId(1), 3), None, "within the bound");
        assert_eq!(lru_victim(&open, MemberId(1), 2), Some(MemberId(2)));
        assert_eq!(
            lru_victim(&open, MemberId(2), 2),
            Some(MemberId(3)),
            "never the one just made"
        );
        let never_used = vec![(MemberId(4), None), (MemberId(5), at(1))];
        assert_eq!(lru_victim(&never_used, MemberId(5), 1), Some(MemberId(4)));
    }
}
