//! burrowd's DNS server end to end on loopback: a fake upstream resolver, a fake daemon
//! (`Directory`), real UDP and TCP sockets. Never touches the real network.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_api::{NetworkMode, NetworkRule, RuleAction};
use burrow_egress::ca::SandboxCa;
use burrow_egress::dns::{self, DnsServer, Resolver};
use burrow_egress::{Directory, Lookup, Reach, SandboxView, SecretValue};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);
const SANDBOX: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// A second sandbox, in the same mode, for the fair-share tests.
const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const BIG: u8 = 60;

/// What the server may admit: 198.18.0.99 stands for an address of the host.
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

fn reach() -> Arc<Reach> {
    Reach::fixed([HOST_ADDR], None, false)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(n: &str, ttl: u32, last: u8) -> Record {
    Record::from_rdata(name(n), ttl, RData::A(A::new(198, 18, 0, last)))
}

/// The fake upstream's zone.
fn zone(qname: &Name) -> Option<Vec<Record>> {
    let records = match qname.to_lowercase().to_ascii().as_str() {
        "api.github.test." => vec![a("api.github.test.", 60, 10)],
        "cdn.test." => vec![
            Record::from_rdata(
                name("cdn.test."),
                300,
                RData::CNAME(CNAME(name("edge.cdn.test."))),
            ),
            a("edge.cdn.test.", 20, 11),
        ],
        "evil.test." => vec![a("evil.test.", 60, 12)],
        "hostlocal.test." => vec![Record::from_rdata(
            name("hostlocal.test."),
            60,
            RData::A(A(HOST_ADDR)),
        )],
        "outside.test." => vec![Record::from_rdata(
            name("outside.test."),
            60,
            RData::A(A::new(198, 51, 100, 7)),
        )],
        "meta.test." => vec![Record::from_rdata(
            name("meta.test."),
            60,
            RData::A(A::new(169, 254, 169, 254)),
        )],
        // Too big for 512 bytes: a client without EDNS gets it truncated over UDP.
        "big.test." => (1..=BIG)
            .map(|i| Record::from_rdata(name("big.test."), 60, RData::A(A::new(198, 18, 1, i))))
            .collect(),
        _ => return None,
    };
    Some(records)
}

fn respond(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let question = request.queries().first()?.clone();
    if question.name().to_lowercase().to_ascii() == "blackhole.test." {
        // A name whose servers never answer.
        return None;
    }
    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    match zone(question.name()) {
        Some(records) if question.query_type() == RecordType::A => {
            reply.add_answers(records);
        }
        Some(_) => {}
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    let bytes = reply.to_vec().ok()?;
    if udp && bytes.len() > usize::from(request.max_payload()) {
        return reply.truncate().to_vec().ok();
    }
    Some(bytes)
}

/// A fake upstream resolver on 127.0.0.1, UDP and TCP on one port, recording the names asked.
struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Upstream {
    async fn start() -> Upstream {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let note = |asked: &Arc<Mutex<Vec<String>>>, query: &[u8]| {
            if let Ok(m) = Message::from_vec(query) {
                if let Some(q) = m.queries().first() {
                    asked.lock().unwrap().push(q.name().to_lowercase().to_ascii());
                }
            }
        };
        let udp_task = tokio::spawn({
            let asked = asked.clone();
            async move {
                let mut buf = vec![0; 65535];
                while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                    note(&asked, &buf[..n]);
                    if let Some(reply) = respond(&buf[..n], true) {
                        let _ = udp.send_to(&reply, peer).await;
                    }
                }
            }
        });
        let tcp_task = tokio::spawn({
            let asked = asked.clone();
            async move {
                while let Ok((mut stream, _)) = tcp.accept().await {
                    let mut len = [0; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        continue;
                    }
                    let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        continue;
                    }
                    note(&asked, &query);
                    if let Some(reply) = respond(&query, false) {
                        let _ = stream.write_all(&(reply.len() as u16).to_be_bytes()).await;
                        let _ = stream.write_all(&reply).await;
                    }
                }
            }
        });
        Upstream {
            addr,
            asked,
            tasks: vec![udp_task, tcp_task],
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The fake daemon: 127.0.0.1 is one sandbox (or nothing), and admissions and events are kept.
struct FakeDir {
    sandbox: Option<(NetworkMode, Vec<NetworkRule>)>,
    ca: Arc<SandboxCa>,
    admits: Mutex<Vec<(Ipv4Addr, Ipv4Addr, Duration)>>,
    events: Mutex<Vec<(String, String, serde_json::Value)>>,
}

impl Directory for FakeDir {
    fn sandbox(&self, src: Ipv4Addr) -> Option<SandboxView> {
        let (mode, rules) = self
            .sandbox
            .clone()
            .filter(|_| src == SANDBOX || src == NEIGHBOUR)?;
        let neighbour = src == NEIGHBOUR;
        Some(SandboxView {
            id: if neighbour { "sbx-2" } else { "sbx-1" }.into(),
            name: if neighbour { "next" } else { "web" }.into(),
            mode,
            rules,
            ca: self.ca.clone(),
        })
    }
    fn placeholder_key(&self) -> Vec<u8> {
        Vec::new()
    }
    fn secret(&self, _: &str) -> Option<SecretValue> {
        None
    }
    fn attached_secrets(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
    fn admit(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: Duration) {
        self.admits.lock().unwrap().push((src, dst, ttl));
    }
    fn event(&self, sandbox_id: &str, kind: &str, data: serde_json::Value) {
        self.events
            .lock()
            .unwrap()
            .push((sandbox_id.into(), kind.into(), data));
    }
}

impl FakeDir {
    fn admits(&self) -> Vec<(Ipv4Addr, Ipv4Addr, Duration)> {
        self.admits.lock().unwrap().clone()
    }
    fn events(&self) -> Vec<(String, String, serde_json::Value)> {
        self.events.lock().unwrap().clone()
    }
}

struct Harness {
    upstream: Upstream,
    dir: Arc<FakeDir>,
    resolver: Arc<Resolver>,
    server: DnsServer,
}

async fn harness(sandbox: Option<(NetworkMode, Vec<NetworkRule>)>) -> Harness {
    harness_with(sandbox, reach()).await
}

async fn harness_with(sandbox: Option<(NetworkMode, Vec<NetworkRule>)>, reach: Arc<Reach>) -> Harness {
    let upstream = Upstream::start().await;
    let resolver = Resolver::new(vec![upstream.addr]);
    let dir = Arc::new(FakeDir {
        sandbox,
        ca: Arc::new(SandboxCa::generate("test").unwrap()),
        admits: Mutex::default(),
        events: Mutex::default(),
    });
    let server = dns::serve(
        "127.0.0.1:0".parse().unwrap(),
        resolver.clone(),
        dir.clone(),
        reach,
    )
    .await
    .unwrap();
    Harness {
        upstream,
        dir,
        resolver,
        server,
    }
}

fn policy(rules: &[(&str, RuleAction)]) -> Option<(NetworkMode, Vec<NetworkRule>)> {
    let rules = rules
        .iter()
        .map(|(d, action)| NetworkRule {
            domain: (*d).into(),
            action: *action,
        })
        .collect();
    Some((NetworkMode::Policy, rules))
}

fn github_only() -> Option<(NetworkMode, Vec<NetworkRule>)> {
    policy(&[
        ("api.github.test", RuleAction::Allow),
        ("cdn.test", RuleAction::Allow),
        ("meta.test", RuleAction::Allow),
        ("big.test", RuleAction::Allow),
        ("*", RuleAction::Deny),
    ])
}

fn query(id: u16, qname: &str, edns: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(qname), RecordType::A));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn exchange_udp(server: SocketAddr, packet: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buf = vec![0; 65535];
    let (n, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("no reply in time")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn ask(server: SocketAddr, qname: &str) -> Message {
    let reply = exchange_udp(server, &query(0x4242, qname, true)).await;
    assert_eq!(reply.id(), 0x4242, "the client's id is kept");
    assert_eq!(reply.message_type(), MessageType::Response);
    reply
}

async fn ask_tcp(server: SocketAddr, qname: &str) -> Message {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await.unwrap();
        let packet = query(0x7777, qname, false);
        stream
            .write_all(&(packet.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&packet).await.unwrap();
        let mut len = [0; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await.unwrap();
        Message::from_vec(&reply).unwrap()
    };
    let reply = timeout(WAIT, exchange).await.expect("no TCP reply in time");
    assert_eq!(reply.id(), 0x7777);
    reply
}

fn v4s(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

#[tokio::test]
async fn allowed_name_is_answered_and_admitted_before_the_reply() {
    let h = harness(github_only()).await;
    let reply = ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(v4s(&reply), vec![ip(10)]);
    // The reply is in hand, so the admission must already have happened.
    assert_eq!(h.dir.admits(), vec![(SANDBOX, ip(10), Duration::from_secs(60))]);
    assert_eq!(h.resolver.handed_out(SANDBOX, ip(10)), vec!["api.github.test"]);
    assert!(
        h.resolver
            .handed_out(Ipv4Addr::new(10, 0, 0, 9), ip(10))
            .is_empty()
    );
    assert!(h.dir.events().is_empty());
}

#[tokio::test]
async fn names_match_case_insensitively() {
    let h = harness(github_only()).await;
    let reply = ask(h.server.local_addr(), "API.GitHub.Test.").await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(v4s(&reply), vec![ip(10)]);
    assert_eq!(h.resolver.handed_out(SANDBOX, ip(10)), vec!["api.github.test"]);
}

#[tokio::test]
async fn cname_chain_is_followed_and_admitted() {
    let h = harness(github_only()).await;
    let reply = ask(h.server.local_addr(), "cdn.test").await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(reply.answers().len(), 2, "the CNAME is passed on too");
    assert_eq!(v4s(&reply), vec![ip(11)]);
    // The smallest TTL on the chain is 20 s; admissions last at least 30 s.
    assert_eq!(h.dir.admits(), vec![(SANDBOX, ip(11), Duration::from_secs(30))]);
    assert_eq!(h.resolver.handed_out(SANDBOX, ip(11)), vec!["cdn.test"]);
}

#[tokio::test]
async fn blocked_addresses_are_answered_but_never_admitted() {
    let h = harness(github_only()).await;
    let reply = ask(h.server.local_addr(), "meta.test").await;
    assert_eq!(v4s(&reply), vec![Ipv4Addr::new(169, 254, 169, 254)]);
    assert!(h.dir.admits().is_empty());
    assert!(
        h.resolver
            .handed_out(SANDBOX, Ipv4Addr::new(169, 254, 169, 254))
            .is_empty()
    );
}

#[tokio::test]
async fn denied_name_is_refused_unasked_and_reported() {
    let h = harness(github_only()).await;
    let reply = ask(h.server.local_addr(), "evil.test").await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(reply.answers().is_empty());
    assert_eq!(reply.queries().len(), 1, "the question is echoed");
    assert!(h.dir.admits().is_empty());
    assert_eq!(
        h.dir.events(),
        vec![(
            "sbx-1".to_owned(),
            "egress.denied".to_owned(),
            json!({"name": "evil.test", "via": "dns"})
        )]
    );
    assert!(
        h.upstream.asked().is_empty(),
        "a denied name never leaves the host"
    );
    assert!(h.resolver.handed_out(SANDBOX, ip(12)).is_empty());
}

#[tokio::test]
async fn no_rules_deny_everything() {
    let h = harness(policy(&[])).await;
    let reply = ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(h.dir.admits().is_empty());
}

#[tokio::test]
async fn mode_none_is_refused() {
    let h = harness(Some((NetworkMode::None, Vec::new()))).await;
    let reply = ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(h.upstream.asked().is_empty());
    assert!(h.dir.admits().is_empty());
}

#[tokio::test]
async fn open_mode_resolves_and_records_without_admitting() {
    let h = harness(Some((NetworkMode::Open, Vec::new()))).await;
    let reply = ask(h.server.local_addr(), "evil.test").await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(v4s(&reply), vec![ip(12)]);
    assert!(h.dir.admits().is_empty(), "open mode needs no admissions");
    assert_eq!(h.resolver.handed_out(SANDBOX, ip(12)), vec!["evil.test"]);

    let missing = ask(h.server.local_addr(), "nope.test").await;
    assert_eq!(
        missing.response_code(),
        ResponseCode::NXDomain,
        "upstream codes pass through"
    );
}

#[tokio::test]
async fn unknown_source_is_refused() {
    let h = harness(None).await;
    let reply = ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(reply.response_code(), ResponseCode::Refused);
    assert!(h.upstream.asked().is_empty());
}

#[tokio::test]
async fn upstream_down_is_servfail() {
    // A port nothing listens on: the kernel answers port-unreachable at once.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = Arc::new(FakeDir {
        sandbox: Some((NetworkMode::Open, Vec::new())),
        ca: Arc::new(SandboxCa::generate("test").unwrap()),
        admits: Mutex::default(),
        events: Mutex::default(),
    });
    let server = dns::serve(
        "127.0.0.1:0".parse().unwrap(),
        Resolver::new(vec![dead]),
        dir,
        reach(),
    )
    .await
    .unwrap();
    let reply = ask(server.local_addr(), "api.github.test").await;
    assert_eq!(reply.response_code(), ResponseCode::ServFail);
}

#[tokio::test]
async fn a_dead_upstream_is_skipped() {
    let upstream = Upstream::start().await;
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let resolver = Resolver::new(vec![dead, upstream.addr]);
    assert_eq!(resolver.lookup_v4("api.github.test").await.unwrap(), vec![ip(10)]);
}

#[tokio::test]
async fn hostile_packets_do_not_kill_the_server() {
    let h = harness(github_only()).await;
    let server = h.server.local_addr();

    // Garbage behind a plausible header: FORMERR, same id.
    let mut garbage = vec![
        0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    garbage.extend_from_slice(&[0x3f, 0xff, 0xff, 0xff, 0x00]);
    let reply = exchange_udp(server, &garbage).await;
    assert_eq!(reply.id(), 0xbeef);
    assert_eq!(reply.response_code(), ResponseCode::FormErr);

    // Two questions: FORMERR.
    let mut two = Message::from_vec(&query(0x0102, "api.github.test", false)).unwrap();
    two.add_query(Query::query(name("evil.test."), RecordType::A));
    let reply = exchange_udp(server, &two.to_vec().unwrap()).await;
    assert_eq!(reply.response_code(), ResponseCode::FormErr);

    // Not a query: NOTIMP.
    let mut update = Message::from_vec(&query(0x0103, "api.github.test", false)).unwrap();
    update.set_op_code(OpCode::Update);
    let reply = exchange_udp(server, &update.to_vec().unwrap()).await;
    assert_eq!(reply.response_code(), ResponseCode::NotImp);

    // Dropped without a reply: runts, responses, oversized packets, a bad TCP frame.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut response = Message::from_vec(&query(0x0104, "api.github.test", false)).unwrap();
    response.set_message_type(MessageType::Response);
    for packet in [vec![], vec![1, 2, 3], response.to_vec().unwrap(), vec![0; 5000]] {
        socket.send_to(&packet, server).await.unwrap();
    }
    let mut stream = timeout(WAIT, TcpStream::connect(server)).await.unwrap().unwrap();
    stream.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    drop(stream);

    assert!(h.upstream.asked().is_empty());
    assert!(h.dir.admits().is_empty());

    // Still answering.
    let reply = ask(server, "api.github.test").await;
    assert_eq!(v4s(&reply), vec![ip(10)]);
    assert_eq!(
        ask_tcp(server, "api.github.test").await.response_code(),
        ResponseCode::NoError
    );
}

#[tokio::test]
async fn tcp_answers_in_full_and_udp_truncates() {
    let h = harness(github_only()).await;
    let server = h.server.local_addr();

    // Over TCP without EDNS: upstream truncates over UDP, the resolver retries over TCP.
    let reply = ask_tcp(server, "big.test").await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(!reply.truncated());
    assert_eq!(reply.answers().len(), usize::from(BIG));
    let admitted: Vec<_> = h.dir.admits().into_iter().map(|(_, dst, _)| dst).collect();
    let expected: Vec<_> = (1..=BIG).map(|i| Ipv4Addr::new(198, 18, 1, i)).collect();
    assert_eq!(admitted, expected);
    assert_eq!(
        h.resolver.handed_out(SANDBOX, Ipv4Addr::new(198, 18, 1, 7)),
        vec!["big.test"]
    );

    // Over UDP without EDNS, the answer does not fit in 512 bytes: TC, so the client uses TCP.
    let reply = exchange_udp(server, &query(0x0105, "big.test", false)).await;
    assert_eq!(reply.id(), 0x0105);
    assert!(reply.truncated());
    assert!(reply.answers().is_empty());
}

#[tokio::test]
async fn lookup_v4_follows_cnames_and_records_nothing() {
    let upstream = Upstream::start().await;
    let resolver = Resolver::new(vec![upstream.addr]);
    assert_eq!(resolver.lookup_v4("cdn.test").await.unwrap(), vec![ip(11)]);
    assert_eq!(
        resolver.lookup_v4("API.github.test.").await.unwrap(),
        vec![ip(10)]
    );
    assert!(resolver.lookup_v4("nope.test").await.unwrap().is_empty());
    assert_eq!(
        resolver.lookup_v4("big.test").await.unwrap().len(),
        usize::from(BIG)
    );
    assert!(resolver.lookup_v4("bad name..test").await.is_err());
    assert!(resolver.handed_out(SANDBOX, ip(11)).is_empty());

    let unconfigured = Resolver::new(Vec::new());
    assert!(unconfigured.lookup_v4("cdn.test").await.is_err());
}

#[tokio::test]
async fn forget_clears_what_a_sandbox_was_handed() {
    let h = harness(github_only()).await;
    ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(h.resolver.handed_out(SANDBOX, ip(10)), vec!["api.github.test"]);
    h.resolver.forget(SANDBOX);
    assert!(h.resolver.handed_out(SANDBOX, ip(10)).is_empty());
}

#[tokio::test]
async fn shutdown_closes_the_sockets() {
    let h = harness(github_only()).await;
    let addr = h.server.local_addr();
    timeout(WAIT, h.server.shutdown()).await.unwrap();
    let refused = timeout(WAIT, TcpStream::connect(addr)).await.unwrap();
    assert!(refused.is_err(), "nothing listens after shutdown");
    // The address can be bound again at once.
    let again = UdpSocket::bind(addr).await;
    assert!(again.is_ok());
}

#[tokio::test]
async fn host_addresses_are_answered_but_never_admitted() {
    let h = harness(policy(&[("*", RuleAction::Allow)])).await;
    let reply = ask(h.server.local_addr(), "hostlocal.test").await;
    assert_eq!(v4s(&reply), vec![HOST_ADDR]);
    assert!(h.dir.admits().is_empty(), "a host address was admitted");
    assert!(h.resolver.handed_out(SANDBOX, HOST_ADDR).is_empty());
    let events = h.dir.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "egress.denied");
    assert_eq!(events[0].2["address"], HOST_ADDR.to_string());
    assert_eq!(events[0].2["reason"], "the address is one of the host's own");
    // Control: the same server admits an address that is not the host's.
    ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(h.dir.admits().len(), 1);
}

#[tokio::test]
async fn addresses_outside_uplink_only_are_never_admitted() {
    let uplink = Some(vec!["198.18.0.0/15".parse().unwrap()]);
    let h = harness_with(
        policy(&[("*", RuleAction::Allow)]),
        Reach::fixed([], uplink, false),
    )
    .await;
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let reply = ask(h.server.local_addr(), "outside.test").await;
    assert_eq!(v4s(&reply), vec![outside]);
    assert!(h.dir.admits().is_empty());
    assert!(h.resolver.handed_out(SANDBOX, outside).is_empty());
    // Control: inside the list.
    ask(h.server.local_addr(), "api.github.test").await;
    assert_eq!(h.dir.admits(), vec![(SANDBOX, ip(10), Duration::from_secs(60))]);
}

/// One query from `src` over UDP; `None` if nothing came back within `wait`.
async fn ask_from(
    src: Ipv4Addr,
    server: SocketAddr,
    qname: &str,
    id: u16,
    wait: Duration,
) -> Option<Message> {
    let socket = UdpSocket::bind((src, 0)).await.unwrap();
    socket.send_to(&query(id, qname, true), server).await.unwrap();
    let mut buf = vec![0; 65535];
    let (n, _) = timeout(wait, socket.recv_from(&mut buf)).await.ok()?.unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), id);
    Some(reply)
}

#[tokio::test]
async fn a_query_flood_from_one_sandbox_does_not_starve_its_neighbour() {
    let h = harness(Some((NetworkMode::Open, Vec::new()))).await;
    let server = h.server.local_addr();
    // The flooder asks for a name whose servers never answer: each query it gets through
    // holds resources for the whole upstream timeout.
    let flooder = Arc::new(UdpSocket::bind((SANDBOX, 0)).await.unwrap());
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (flooder, refused) = (flooder.clone(), refused.clone());
        async move {
            let mut buf = vec![0; 65535];
            while let Ok((n, _)) = flooder.recv_from(&mut buf).await {
                if Message::from_vec(&buf[..n]).is_ok_and(|m| m.response_code() == ResponseCode::Refused) {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    const FLOOD: u16 = 2000;
    let flood = tokio::spawn({
        let flooder = flooder.clone();
        async move {
            // About 400 queries a second, for about five seconds.
            for i in 0..FLOOD {
                flooder
                    .send_to(&query(i, "blackhole.test", true), server)
                    .await
                    .unwrap();
                if i % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    // While it lasts, the neighbour asks ten times a second, and is answered every time.
    let mut answered = 0u16;
    while !flood.is_finished() {
        let reply = ask_from(
            NEIGHBOUR,
            server,
            "api.github.test",
            answered,
            Duration::from_secs(3),
        )
        .await
        .unwrap_or_else(|| panic!("the neighbour's query {answered} got no answer during the flood"));
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(v4s(&reply), vec![ip(10)]);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flood.await.unwrap();
    assert!(
        answered >= 10,
        "the flood was too short to mean anything ({answered} queries)"
    );
    // Control: the flooder was turned away past its share, so the limit is what kept the
    // neighbour's queries answered.
    let deadline = tokio::time::Instant::now() + WAIT;
    while refused.load(std::sync::atomic::Ordering::Relaxed) < usize::from(FLOOD / 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooder got only {} REFUSED of {FLOOD}",
            refused.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
}

/// `qname` over TCP on `stream`; `None` if the server closed the connection instead.
async fn tcp_query(stream: &mut TcpStream, qname: &str, id: u16) -> Option<Message> {
    let packet = query(id, qname, false);
    let exchange = async {
        stream.write_all(&(packet.len() as u16).to_be_bytes()).await?;
        stream.write_all(&packet).await?;
        let mut len = [0; 2];
        stream.read_exact(&mut len).await?;
        let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = timeout(WAIT, exchange)
        .await
        .expect("no TCP answer nor close in time")
        .ok()?;
    Some(Message::from_vec(&reply).unwrap())
}

async fn tcp_from(src: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((src, 0))).unwrap();
    timeout(WAIT, socket.connect(server)).await.unwrap().unwrap()
}

#[tokio::test]
async fn idle_tcp_connections_from_one_sandbox_do_not_block_a_neighbour() {
    let h = harness(Some((NetworkMode::Open, Vec::new()))).await;
    let server = h.server.local_addr();
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(tcp_from(SANDBOX, server).await);
    }
    // The neighbour's query over TCP is answered.
    let mut mine = tcp_from(NEIGHBOUR, server).await;
    let reply = tcp_query(&mut mine, "api.github.test", 1)
        .await
        .expect("the neighbour's TCP connection was closed");
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    // Control: of the flooder's 70 connections, exactly its share was kept; the rest were
    // closed (so the limit is what left room for the neighbour).
    let mut kept = 0;
    for (i, stream) in idle.iter_mut().enumerate() {
        if let Some(reply) = tcp_query(stream, "api.github.test", i as u16).await {
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            kept += 1;
        }
    }
    assert_eq!(kept, dns::PER_SOURCE_TCP);
}
