//! The sandbox resolver: burrowd's DNS server on the bridge gateway, the only resolver a
//! sandbox is given.
//!
//! It owns three things: answering sandboxes ([`serve`]: the policy check, then forwarding the
//! query unchanged to the upstream resolvers), telling the daemon which addresses a `policy`
//! sandbox may now reach ([`Directory::admit`], always *before* the answer leaves), and
//! remembering which names it answered with which address ([`Resolver`], the proxy's
//! [`Lookup::handed_out`]).
//!
//! It never answers from its own data, never caches answers, and never admits (nor records as
//! handed out) an address [`Reach`] refuses: blocked ranges, the host's own addresses, and
//! anything outside `--uplink-only`.
//!
//! Fair shares: every sandbox (source address) has its own budget, so one cannot starve the
//! others. A token bucket of [`RATE_PER_SECOND`] queries a second (bursts of [`RATE_BURST`]),
//! at most [`PER_SOURCE_PENDING`] queries accepted and unanswered, at most
//! [`PER_SOURCE_UPSTREAM`] of them asking upstream at once (the others wait their turn), at
//! most [`PER_SOURCE_TCP`] TCP connections. Past the rate or the pending limit a query gets
//! REFUSED at once; a TCP connection past the limit is closed. The global limits stay as the
//! outer bound.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burrow_api::NetworkMode;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tracing::debug;

use crate::policy::allows;
use crate::{Directory, Lookup, Reach};

/// How long one upstream gets to answer one try (UDP, then TCP if the answer was truncated).
const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Admissions and handed-out names last at least this long, whatever the record's TTL: clients
/// connect right after resolving even when the TTL is 0.
const MIN_TTL: Duration = Duration::from_secs(30);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest query accepted from a sandbox. Real queries are a few hundred bytes.
const MAX_QUERY: usize = 4096;
/// Queries answered at once, over both transports; past this, UDP queries are dropped.
const MAX_INFLIGHT: usize = 1024;
/// Upstream exchanges at once, over all sandboxes (each waits its turn, first come first served).
const MAX_UPSTREAM: usize = 256;
const MAX_TCP_CONNECTIONS: usize = 256;
/// One source's sustained query rate, and its burst.
pub const RATE_PER_SECOND: f64 = 100.0;
pub const RATE_BURST: f64 = 200.0;
/// One source's queries accepted and not yet answered; past this, REFUSED.
pub const PER_SOURCE_PENDING: usize = 32;
/// One source's queries asking the upstreams at once; the rest of its pending queries wait.
pub const PER_SOURCE_UPSTREAM: usize = 8;
/// How long a query waits for one of its source's upstream slots before SERVFAIL (the client
/// has retried by then).
const SLOT_WAIT: Duration = Duration::from_secs(5);
/// One source's open TCP connections; past this, a new one is closed at once.
pub const PER_SOURCE_TCP: usize = 8;
/// Sources remembered before idle ones are forgotten.
const MAX_SOURCES: usize = 4096;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
const MAX_CNAME_HOPS: usize = 16;
/// Bounds on the handed-out record, per sandbox address.
const MAX_ADDRESSES_PER_SANDBOX: usize = 4096;
const MAX_NAMES_PER_ADDRESS: usize = 8;

/// Forwards queries to the upstream resolvers and remembers what was handed out to whom.
pub struct Resolver {
    upstreams: Vec<SocketAddr>,
    handed: Mutex<HandedOut>,
}

/// Sandbox address → answered address → (name asked for, until when).
type HandedOut = HashMap<Ipv4Addr, HashMap<Ipv4Addr, Vec<(String, Instant)>>>;

impl Resolver {
    /// A resolver that asks `upstreams` in order (each gets one try, UDP with TCP fallback).
    pub fn new(upstreams: Vec<SocketAddr>) -> Arc<Resolver> {
        Arc::new(Resolver {
            upstreams,
            handed: Mutex::new(HashMap::new()),
        })
    }

    /// Drops everything handed out to `src`: call it when a sandbox's address is released, so
    /// the next sandbox to get the address inherits nothing.
    pub fn forget(&self, src: Ipv4Addr) {
        self.handed().remove(&src);
    }

    fn handed(&self) -> MutexGuard<'_, HandedOut> {
        // The map is consistent after every statement; a panic elsewhere must not wedge DNS.
        self.handed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, src: Ipv4Addr, name: &str, answers: &[(Ipv4Addr, Duration)]) {
        let now = Instant::now();
        let mut handed = self.handed();
        let by_dst = handed.entry(src).or_default();
        for &(dst, ttl) in answers {
            let until = now + ttl;
            if by_dst.len() >= MAX_ADDRESSES_PER_SANDBOX && !by_dst.contains_key(&dst) {
                by_dst.retain(|_, names| {
                    names.retain(|(_, until)| *until > now);
                    !names.is_empty()
                });
                if by_dst.len() >= MAX_ADDRESSES_PER_SANDBOX {
                    let soonest = by_dst
                        .iter()
                        .min_by_key(|(_, names)| names.iter().map(|(_, until)| *until).max())
                        .map(|(dst, _)| *dst);
                    if let Some(soonest) = soonest {
                        by_dst.remove(&soonest);
                    }
                }
            }
            let names = by_dst.entry(dst).or_default();
            match names.iter_mut().find(|(n, _)| n == name) {
                Some((_, old)) => *old = (*old).max(until),
                None => {
                    if names.len() >= MAX_NAMES_PER_ADDRESS {
                        if let Some(i) = (0..names.len()).min_by_key(|&i| names[i].1) {
                            names.swap_remove(i);
                        }
                    }
                    names.push((name.to_owned(), until));
                }
            }
        }
    }

    /// Sends `query` (whose id is `id` and whose one question is `question`) to each upstream in
    /// turn until one answers it.
    async fn exchange(&self, query: &[u8], id: u16, question: &Query) -> io::Result<(Vec<u8>, Message)> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream resolvers configured");
        for &upstream in &self.upstreams {
            match exchange_one(upstream, query, id, question).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    debug!(%upstream, error = %e, "dns: upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn resolve_v4(&self, name: &str) -> io::Result<Vec<Ipv4Addr>> {
        let mut qname = Name::from_ascii(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        qname.set_fqdn(true);
        let question = Query::query(qname, RecordType::A);
        let id = rand::random::<u16>();
        let mut message = Message::new();
        message
            .set_id(id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(question.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
        let bytes = message.to_vec().map_err(io::Error::other)?;
        let (_, answer) = self.exchange(&bytes, id, &question).await?;
        match answer.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(addresses(&answer, question.name())
                .into_iter()
                .map(|(a, _)| a)
                .collect()),
            code => Err(io::Error::other(format!("upstream answered {code} for {name}"))),
        }
    }
}

impl Lookup for Resolver {
    /// Asks the upstreams directly; records nothing. The addresses are not filtered through
    /// [`Reach`]: that is the caller's check.
    fn lookup_v4(&self, name: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<Ipv4Addr>>> + Send + '_>> {
        let name = name.to_owned();
        Box::pin(async move { self.resolve_v4(&name).await })
    }

    fn handed_out(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<String> {
        let now = Instant::now();
        let handed = self.handed();
        let Some(names) = handed.get(&src).and_then(|by_dst| by_dst.get(&dst)) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// One upstream, one try: UDP, and TCP if the UDP answer was truncated.
async fn exchange_one(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> io::Result<(Vec<u8>, Message)> {
    let answer = timeout(TRY_TIMEOUT, exchange_udp(upstream, query, id, question))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over UDP"))??;
    if !answer.1.truncated() {
        return Ok(answer);
    }
    timeout(TRY_TIMEOUT, exchange_tcp(upstream, query, id, question))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer over TCP"))?
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> io::Result<(Vec<u8>, Message)> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query: a random source port, and only the upstream can answer it.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            Ok(answer) if answers(&answer, id, question) => return Ok((buf[..n].to_vec(), answer)),
            _ => debug!(%upstream, "dns: ignored a stray or malformed upstream datagram"),
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    question: &Query,
) -> io::Result<(Vec<u8>, Message)> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    let bytes = read_frame(&mut stream, usize::from(u16::MAX))
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed the connection"))?;
    match Message::from_vec(&bytes) {
        Ok(answer) if answers(&answer, id, question) => Ok((bytes, answer)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upstream sent a malformed or mismatched answer",
        )),
    }
}

/// Whether `answer` is the response to the query with `id` and `question`.
fn answers(answer: &Message, id: u16, question: &Query) -> bool {
    answer.id() == id
        && answer.message_type() == MessageType::Response
        && matches!(answer.queries(), [q] if q.name() == question.name()
            && q.query_type() == question.query_type()
            && q.query_class() == question.query_class())
}

/// The IPv4 addresses `answer` gives for `qname`, following its CNAME chain, each with how long
/// it may be used: the smallest TTL along the chain, clamped to [`MIN_TTL`, `MAX_TTL`].
fn addresses(answer: &Message, qname: &Name) -> Vec<(Ipv4Addr, Duration)> {
    let records = || answer.answers().iter().filter(|r| r.dns_class() == DNSClass::IN);
    let mut chain = vec![qname.clone()];
    let mut chain_ttl = u32::MAX;
    for _ in 0..MAX_CNAME_HOPS {
        let current = &chain[chain.len() - 1];
        let next = records().find_map(|r| match r.data() {
            RData::CNAME(target) if r.name() == current => Some((target.0.clone(), r.ttl())),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.contains(&target) => {
                chain_ttl = chain_ttl.min(ttl);
                chain.push(target);
            }
            _ => break,
        }
    }
    let mut out: Vec<(Ipv4Addr, Duration)> = Vec::new();
    for r in records() {
        if let RData::A(a) = r.data() {
            if chain.contains(r.name()) && !out.iter().any(|(seen, _)| *seen == a.0) {
                let ttl = Duration::from_secs(u64::from(chain_ttl.min(r.ttl())));
                out.push((a.0, ttl.clamp(MIN_TTL, MAX_TTL)));
            }
        }
    }
    out
}

/// The name as the rules see it (lowercase, no trailing dot), if it is a host name at all:
/// labels of letters, digits, `-` and `_`. Anything else no rule may allow.
/// The name a query is judged by in policy mode: an SRV lookup of a service of an allowed
/// name (`_http._tcp.deb.debian.org`, which apt asks before every download) is judged by that
/// name. It admits nothing: an SRV answer names hosts, and each is resolved (and judged) on its
/// own before anything connects.
fn policy_name(host: &str, qtype: RecordType) -> &str {
    if qtype != RecordType::SRV {
        return host;
    }
    let mut labels = host.splitn(3, '.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some(service), Some(proto), Some(rest)) if service.starts_with('_') && proto.starts_with('_') => {
            rest
        }
        _ => host,
    }
}

fn host_name(name: &Name) -> Option<String> {
    let mut host = String::new();
    for label in name.iter() {
        if label.is_empty()
            || !label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !host.is_empty() {
            host.push('.');
        }
        host.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    Some(host)
}

/// A running DNS server. Dropping it (or [`DnsServer::shutdown`]) stops it.
pub struct DnsServer {
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// The address it answers on (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits until its sockets are closed.
    pub async fn shutdown(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Answers sandboxes' queries on `listen`, UDP and TCP on the same port. A port of 0 picks one.
/// Addresses in answers are admitted and recorded only where `reach` allows them.
pub async fn serve(
    listen: SocketAddr,
    resolver: Arc<Resolver>,
    dir: Arc<dyn Directory>,
    reach: Arc<Reach>,
) -> io::Result<DnsServer> {
    let (udp, tcp) = bind(listen).await?;
    let local_addr = udp.local_addr()?;
    let server = Arc::new(Server {
        resolver,
        dir,
        reach,
        inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        upstream: Arc::new(Semaphore::new(MAX_UPSTREAM)),
        sources: Sources::default(),
    });
    let tasks = vec![
        tokio::spawn(serve_udp(Arc::new(udp), server.clone())),
        tokio::spawn(serve_tcp(tcp, server)),
    ];
    debug!(%local_addr, "dns: serving");
    Ok(DnsServer { local_addr, tasks })
}

async fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(listen).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port UDP picked may be taken for TCP; pick again.
            Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, server: Arc<Server>) {
    // Dropping the set (when this task is aborted) aborts every query in flight.
    let mut queries = JoinSet::new();
    let mut buf = vec![0; MAX_QUERY + 1];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(received) => received,
                    Err(e) => {
                        debug!(error = %e, "dns: udp receive failed");
                        continue;
                    }
                };
                if n > MAX_QUERY {
                    debug!(%peer, "dns: dropped an oversized query");
                    continue;
                }
                let guard = match server.sources.admit_query(peer.ip()) {
                    Ok(guard) => guard,
                    Err(limit) => {
                        debug!(%peer, limit, "dns: over its share, refused");
                        if let Some(reply) = refused(&buf[..n]) {
                            let _ = socket.try_send_to(&reply, peer);
                        }
                        continue;
                    }
                };
                let Ok(permit) = server.inflight.clone().try_acquire_owned() else {
                    debug!(%peer, "dns: busy, dropped a query");
                    continue;
                };
                let packet = buf[..n].to_vec();
                let (socket, server) = (socket.clone(), server.clone());
                queries.spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = server.answer(peer.ip(), &packet, Transport::Udp, &guard).await {
                        if let Err(e) = socket.send_to(&reply, peer).await {
                            debug!(%peer, error = %e, "dns: udp send failed");
                        }
                    }
                });
            }
            Some(_) = queries.join_next(), if !queries.is_empty() => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, server: Arc<Server>) {
    let connections_left = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "dns: tcp accept failed");
                        // Typically EMFILE: give the table a moment rather than spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(mine) = server.sources.admit_tcp(peer.ip()) else {
                    debug!(%peer, "dns: too many tcp connections from this source, closed one");
                    continue;
                };
                let Ok(permit) = connections_left.clone().try_acquire_owned() else {
                    debug!(%peer, "dns: too many tcp connections, dropped one");
                    continue;
                };
                let server = server.clone();
                connections.spawn(async move {
                    let _permit = (permit, mine);
                    if let Err(e) = server.connection(stream, peer).await {
                        debug!(%peer, error = %e, "dns: tcp connection ended");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte message"),
        ));
    }
    let mut bytes = vec![0; len];
    stream.read_exact(&mut bytes).await?;
    Ok(Some(bytes))
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message longer than 65535 bytes"))?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    stream.write_all(&frame).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

struct Server {
    resolver: Arc<Resolver>,
    dir: Arc<dyn Directory>,
    reach: Arc<Reach>,
    inflight: Arc<Semaphore>,
    upstream: Arc<Semaphore>,
    sources: Sources,
}

/// Per-source budgets (a source is a sandbox's address: the bridge drops spoofed ones).
#[derive(Default)]
struct Sources(Arc<Mutex<HashMap<IpAddr, Source>>>);

struct Source {
    tokens: f64,
    refilled: Instant,
    pending: usize,
    tcp: usize,
    upstream: Arc<Semaphore>,
}

impl Source {
    fn new() -> Source {
        Source {
            tokens: RATE_BURST,
            refilled: Instant::now(),
            pending: 0,
            tcp: 0,
            upstream: Arc::new(Semaphore::new(PER_SOURCE_UPSTREAM)),
        }
    }

    fn idle(&self) -> bool {
        self.pending == 0 && self.tcp == 0
    }
}

impl Sources {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(map: &mut HashMap<IpAddr, Source>, ip: IpAddr) -> &mut Source {
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            // Forget sources with nothing open; their buckets refill to the burst anyway
            // after two seconds, which is all a forgotten bucket gains.
            map.retain(|_, s| !s.idle());
        }
        map.entry(ip).or_insert_with(Source::new)
    }

    /// Takes a token and a pending slot for one query from `ip`, or says which limit it hit.
    fn admit_query(&self, ip: IpAddr) -> Result<QueryGuard, &'static str> {
        let mut map = self.lock();
        let s = Self::entry(&mut map, ip);
        let now = Instant::now();
        let earned = now.duration_since(s.refilled).as_secs_f64() * RATE_PER_SECOND;
        s.tokens = (s.tokens + earned).min(RATE_BURST);
        s.refilled = now;
        if s.tokens < 1.0 {
            return Err("rate");
        }
        if s.pending >= PER_SOURCE_PENDING {
            return Err("pending");
        }
        s.tokens -= 1.0;
        s.pending += 1;
        Ok(QueryGuard {
            sources: self.0.clone(),
            ip,
            upstream: s.upstream.clone(),
        })
    }

    /// Counts one more TCP connection from `ip`, unless it has its share open already.
    fn admit_tcp(&self, ip: IpAddr) -> Option<TcpGuard> {
        let mut map = self.lock();
        let s = Self::entry(&mut map, ip);
        if s.tcp >= PER_SOURCE_TCP {
            return None;
        }
        s.tcp += 1;
        Some(TcpGuard {
            sources: self.0.clone(),
            ip,
        })
    }
}

/// One accepted query; its source's pending count drops when it is answered (or dropped).
struct QueryGuard {
    sources: Arc<Mutex<HashMap<IpAddr, Source>>>,
    ip: IpAddr,
    upstream: Arc<Semaphore>,
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&self.ip) {
            s.pending = s.pending.saturating_sub(1);
        }
    }
}

struct TcpGuard {
    sources: Arc<Mutex<HashMap<IpAddr, Source>>>,
    ip: IpAddr,
}

impl Drop for TcpGuard {
    fn drop(&mut self) {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&self.ip) {
            s.tcp = s.tcp.saturating_sub(1);
        }
    }
}

/// REFUSED for a query that is over its source's share, built from the packet alone; `None`
/// for what is no query (nothing is sent back).
fn refused(packet: &[u8]) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    match Message::from_vec(packet) {
        Ok(request) => Some(error_reply(&request, ResponseCode::Refused)),
        Err(_) => None,
    }
}

impl Server {
    /// Answers queries on one TCP connection, one at a time, until the client goes quiet.
    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let idle = || io::Error::new(io::ErrorKind::TimedOut, "idle");
        loop {
            let Some(query) = timeout(TCP_IDLE, read_frame(&mut stream, MAX_QUERY))
                .await
                .map_err(|_| idle())??
            else {
                return Ok(());
            };
            let reply = match self.sources.admit_query(peer.ip()) {
                Ok(guard) => {
                    let _permit = self.inflight.acquire().await.map_err(io::Error::other)?;
                    self.answer(peer.ip(), &query, Transport::Tcp, &guard).await
                }
                Err(limit) => {
                    debug!(%peer, limit, "dns: over its share, refused");
                    refused(&query)
                }
            };
            let Some(reply) = reply else {
                return Ok(());
            };
            timeout(TCP_IDLE, write_frame(&mut stream, &reply))
                .await
                .map_err(|_| idle())??;
        }
    }

    /// The reply to one query from `peer`, or `None` to send nothing.
    async fn answer(
        &self,
        peer: IpAddr,
        packet: &[u8],
        transport: Transport,
        guard: &QueryGuard,
    ) -> Option<Vec<u8>> {
        let [id_hi, id_lo, flags, ..] = *packet else {
            debug!(%peer, "dns: dropped a runt packet");
            return None;
        };
        if flags & 0x80 != 0 {
            // A response, not a query: answering it could start a loop.
            return None;
        }
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(e) => {
                debug!(%peer, error = %e, "dns: malformed query");
                // Header only: id, QR, the opcode and RD as sent, FORMERR.
                let mut reply = vec![0; 12];
                reply[..2].copy_from_slice(&[id_hi, id_lo]);
                reply[2] = 0x80 | (flags & 0x79);
                reply[3] = 0x80 | 1; // RA, FORMERR
                return Some(reply);
            }
        };
        if request.op_code() != OpCode::Query {
            return Some(error_reply(&request, ResponseCode::NotImp));
        }
        let [question] = request.queries() else {
            return Some(error_reply(&request, ResponseCode::FormErr));
        };
        if !request.answers().is_empty() || !request.name_servers().is_empty() {
            return Some(error_reply(&request, ResponseCode::FormErr));
        }

        let src = match peer {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let Some((src, sandbox)) = src.and_then(|src| self.dir.sandbox(src).map(|sandbox| (src, sandbox)))
        else {
            debug!(%peer, "dns: refused a query from outside any sandbox");
            return Some(error_reply(&request, ResponseCode::Refused));
        };
        let host = host_name(question.name());
        match sandbox.mode {
            NetworkMode::None => {
                debug!(sandbox = %sandbox.name, "dns: refused, network mode none");
                return Some(error_reply(&request, ResponseCode::Refused));
            }
            NetworkMode::Policy => {
                if !host.as_deref().is_some_and(|host| {
                    allows(
                        sandbox.mode,
                        &sandbox.rules,
                        policy_name(host, question.query_type()),
                    )
                }) {
                    let shown = host.unwrap_or_else(|| question.name().to_ascii());
                    debug!(sandbox = %sandbox.name, name = %shown, "dns: denied by policy");
                    self.dir.event(
                        &sandbox.id,
                        "egress.denied",
                        serde_json::json!({"name": shown, "via": "dns"}),
                    );
                    return Some(error_reply(&request, ResponseCode::Refused));
                }
            }
            NetworkMode::Open => {}
        }

        // This source's turn, then everyone's: a source whose upstream queries hang holds at
        // most its own slots.
        let Ok(Ok(_mine)) = timeout(SLOT_WAIT, guard.upstream.acquire()).await else {
            debug!(sandbox = %sandbox.name, "dns: no upstream slot in time");
            return Some(error_reply(&request, ResponseCode::ServFail));
        };
        let Ok(Ok(_ours)) = timeout(SLOT_WAIT, self.upstream.acquire()).await else {
            debug!(sandbox = %sandbox.name, "dns: no upstream slot in time");
            return Some(error_reply(&request, ResponseCode::ServFail));
        };
        let (reply, answer) = match self.resolver.exchange(packet, request.id(), question).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(sandbox = %sandbox.name, name = %question.name(), error = %e, "dns: upstreams failed");
                return Some(error_reply(&request, ResponseCode::ServFail));
            }
        };

        let handed: Vec<_> = addresses(&answer, question.name())
            .into_iter()
            .filter(|&(dst, _)| match self.reach.check(dst) {
                Ok(()) => true,
                Err(why) => {
                    debug!(sandbox = %sandbox.name, name = %question.name(), %dst, %why, "dns: not admitting");
                    if sandbox.mode == NetworkMode::Policy {
                        let shown = host.clone().unwrap_or_else(|| question.name().to_ascii());
                        self.dir.event(
                            &sandbox.id,
                            "egress.denied",
                            serde_json::json!({"name": shown, "address": dst.to_string(), "via": "dns", "reason": why.reason()}),
                        );
                    }
                    false
                }
            })
            .collect();
        if sandbox.mode == NetworkMode::Policy {
            for &(dst, ttl) in &handed {
                self.dir.admit(src, dst, ttl);
            }
        }
        if let Some(host) = &host {
            self.resolver.record(src, host, &handed);
        }
        debug!(sandbox = %sandbox.name, name = %question.name(), code = %answer.response_code(), addresses = handed.len(), "dns: answered");

        if transport == Transport::Udp && reply.len() > usize::from(request.max_payload()) {
            // Too big for the client's UDP buffer: it retries over TCP.
            return answer.truncate().to_vec().ok();
        }
        Some(reply)
    }
}

/// An answer with no records: the question echoed, and `code`.
fn error_reply(request: &Message, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::error_msg(request.id(), request.op_code(), code);
    reply
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_queries(request.queries().iter().cloned());
    reply.to_vec().unwrap_or_else(|_| {
        // Echoing the question failed to encode: send the bare header.
        let mut bare = Message::error_msg(request.id(), request.op_code(), code);
        bare.set_recursion_available(true);
        bare.to_vec().unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn follows_the_cname_chain_only() {
        let mut m = Message::new();
        m.add_answer(Record::from_rdata(
            name("www.example.com."),
            300,
            RData::CNAME(CNAME(name("edge.cdn.net."))),
        ));
        m.add_answer(Record::from_rdata(
            name("edge.cdn.net."),
            20,
            RData::CNAME(CNAME(name("e1.cdn.net."))),
        ));
        m.add_answer(Record::from_rdata(
            name("e1.cdn.net."),
            600,
            RData::A(A::new(198, 51, 100, 1)),
        ));
        m.add_answer(Record::from_rdata(
            name("E1.cdn.net."),
            600,
            RData::A(A::new(198, 51, 100, 2)),
        ));
        m.add_answer(Record::from_rdata(
            name("other.net."),
            600,
            RData::A(A::new(198, 51, 100, 3)),
        ));
        let got = addresses(&m, &name("WWW.example.com."));
        assert_eq!(
            got,
            vec![
                (Ipv4Addr::new(198, 51, 100, 1), MIN_TTL),
                (Ipv4Addr::new(198, 51, 100, 2), MIN_TTL)
            ]
        );
    }

    #[test]
    fn cname_loops_end() {
        let mut m = Message::new();
        m.add_answer(Record::from_rdata(
            name("a.test."),
            300,
            RData::CNAME(CNAME(name("b.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("b.test."),
            300,
            RData::CNAME(CNAME(name("a.test."))),
        ));
        m.add_answer(Record::from_rdata(
            name("b.test."),
            3600,
            RData::A(A::new(198, 51, 100, 1)),
        ));
        assert_eq!(
            addresses(&m, &name("a.test.")),
            vec![(Ipv4Addr::new(198, 51, 100, 1), Duration::from_secs(300))]
        );
    }

    #[test]
    fn srv_lookups_of_a_service_are_judged_by_its_name() {
        assert_eq!(
            policy_name("_http._tcp.deb.debian.org", RecordType::SRV),
            "deb.debian.org"
        );
        // Only SRV, only a `_service._proto.` prefix.
        assert_eq!(
            policy_name("_http._tcp.deb.debian.org", RecordType::A),
            "_http._tcp.deb.debian.org"
        );
        assert_eq!(
            policy_name("_dmarc.example.com", RecordType::SRV),
            "_dmarc.example.com"
        );
        assert_eq!(
            policy_name("a._tcp.example.com", RecordType::SRV),
            "a._tcp.example.com"
        );
        assert_eq!(policy_name("_x._tcp", RecordType::SRV), "_x._tcp");
    }

    #[test]
    fn host_names() {
        assert_eq!(
            host_name(&name("API.GitHub.com.")).as_deref(),
            Some("api.github.com")
        );
        assert_eq!(
            host_name(&name("_dmarc.example.com.")).as_deref(),
            Some("_dmarc.example.com")
        );
        let odd = Name::from_labels(vec![&b"a.b"[..], &b"com"[..]]).unwrap();
        assert_eq!(host_name(&odd), None);
        let binary = Name::from_labels(vec![&b"a\0"[..], &b"com"[..]]).unwrap();
        assert_eq!(host_name(&binary), None);
    }

    #[test]
    fn handed_out_is_bounded() {
        let r = Resolver::new(Vec::new());
        let src = Ipv4Addr::new(10, 0, 0, 2);
        let dst = Ipv4Addr::new(198, 51, 100, 1);
        for i in 0..(MAX_NAMES_PER_ADDRESS + 5) {
            r.record(src, &format!("h{i}.test"), &[(dst, MIN_TTL)]);
        }
        assert_eq!(r.handed_out(src, dst).len(), MAX_NAMES_PER_ADDRESS);
        for i in 0..(MAX_ADDRESSES_PER_SANDBOX as u32 + 10) {
            r.record(src, "many.test", &[(Ipv4Addr::from(0xc000_0000 + i), MIN_TTL)]);
        }
        assert_eq!(r.handed()[&src].len(), MAX_ADDRESSES_PER_SANDBOX);
        r.forget(src);
        assert!(r.handed_out(src, dst).is_empty());
    }
}
