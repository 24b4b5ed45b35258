//! The frame relay against hostile and unusual HTTP/2, frame by frame, on
//! both roles: the shim on its Unix socket and the relay over mTLS. The
//! bridge works below h2's stream layer, so every limit a server library
//! would enforce is the bridge's own (or its codec's); each test names the
//! exact answer. A frame driver on the driver's socket records what got
//! through.

mod common;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::process::ProcessChain;
use common::raw_h2::request_headers;
use common::raw_h2::*;
use common::*;
use futures_util::StreamExt;
use h2::frame::{Frame, Ping, Reason, Settings, StreamId, WindowUpdate};
use openshell_driver_bridge::role::relay::{self, DriverTarget, RunningRelay};
use openshell_driver_bridge::role::shim::{self, RunningShim};
use openshell_driver_bridge::shutdown::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};

/// Which role the raw client speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The shim's Unix socket (h2c), as a gateway.
    Shim,
    /// The relay's mTLS port, as a shim.
    Relay,
}

const WAIT: Duration = Duration::from_secs(20);

/// A chain (driver <- relay <- shim) in this process with a frame driver.
struct Bed {
    chain: Chain,
    driver: FrameDriver,
}

impl Bed {
    async fn start(options: DriverOptions) -> Bed {
        let chain = Chain::start_with(tempfile::tempdir().unwrap(), |_| {}, |_| {}).await;
        let driver = FrameDriver::serve(&chain.driver_socket, options);
        Bed { chain, driver }
    }

    async fn client(&self, role: Role) -> RawClient {
        match role {
            Role::Shim => RawClient::unix(&self.chain.shim_socket).await,
            Role::Relay => RawClient::over(relay_tls(self.chain.relay.local_addr, &self.chain.pki).await, true).await,
        }
    }
}

/// The role under test with its next hop down at first, brought up later:
/// the relay's driver (a frame driver on its Unix socket), or the shim's
/// upstream (a frame driver over mTLS, so that nothing between the shim
/// and the recording driver hides what the shim sends).
struct DownBed {
    role: Role,
    dir: tempfile::TempDir,
    pki: TestPki,
    shutdown: Shutdown,
    options: DriverOptions,
    relay_addr: std::net::SocketAddr,
    driver_socket: PathBuf,
    shim_socket: PathBuf,
    relay: Option<RunningRelay>,
    shim: Option<RunningShim>,
    driver: Option<FrameDriver>,
}

impl DownBed {
    async fn start(role: Role, options: DriverOptions) -> DownBed {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new(&dir.path().join("pki"));
        let mut bed = DownBed {
            role,
            driver_socket: dir.path().join("driver/driver.sock"),
            shim_socket: dir.path().join("shim/compute-driver.sock"),
            dir,
            pki,
            shutdown: Shutdown::new(),
            options,
            relay_addr: free_port(),
            relay: None,
            shim: None,
            driver: None,
        };
        match role {
            Role::Relay => bed.start_relay().await,
            Role::Shim => {
                let mut config = shim_config(&bed.pki, &bed.shim_socket, bed.relay_addr);
                config.settings.dial.connect_wait = WAIT;
                bed.shim = Some(shim::start(config, bed.shutdown.clone()).unwrap());
            }
        }
        bed
    }

    async fn start_relay(&mut self) {
        let mut config = relay_config(&self.pki, DriverTarget::Unix(self.driver_socket.clone()));
        config.listen = self.relay_addr;
        config.settings.dial.connect_wait = WAIT;
        self.relay = Some(relay::start(config, self.shutdown.clone()).await.unwrap());
    }

    /// Brings the next hop of the role under test up.
    async fn next_hop_up(&mut self) {
        match self.role {
            Role::Relay => self.driver = Some(FrameDriver::serve(&self.driver_socket, self.options.clone())),
            Role::Shim => {
                let tls = openshell_driver_bridge::tls::config::server_config(&self.pki.server_tls()).unwrap();
                self.driver = Some(FrameDriver::serve_tls(self.relay_addr, tls, self.options.clone()).await)
            }
        }
    }

    fn driver(&self) -> &FrameDriver {
        self.driver.as_ref().expect("driver started")
    }

    async fn client(&self) -> RawClient {
        match self.role {
            Role::Shim => RawClient::unix(&self.shim_socket).await,
            Role::Relay => RawClient::over(relay_tls(self.relay_addr, &self.pki).await, true).await,
        }
    }
}

impl Drop for DownBed {
    fn drop(&mut self) {
        self.shutdown.stop_now();
        let _ = &self.dir;
    }
}

/// Each scenario once per role: `name::shim` and `name::relay`.
macro_rules! both_roles {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shim() {
                super::$name(Role::Shim).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn relay() {
                super::$name(Role::Relay).await
            }
        }
    )*};
}

both_roles!(
    continuation_flood,
    a_megabyte_of_headers,
    a_megabyte_of_headers_by_hpack_indexing,
    even_stream_id,
    data_on_stream_zero,
    zero_window_increment,
    enable_push_two,
    initial_window_above_max,
    frames_after_goaway,
    unknown_frame_types,
    connection_window_overflow,
    rapid_reset,
    padded_request_data,
    padded_answer_data,
    pings_stay_on_their_hop,
    settings_acks_reach_only_their_owner,
    max_streams_of_the_next_hop_on_resume,
    slow_reader_keeps_memory_bounded,
);

/// The GOAWAY a broken client gets: `reason`, naming no stream beyond the
/// last it opened; then the connection ends and the driver saw no stream.
async fn refused(bed: &Bed, client: &mut RawClient, reason: Reason, debug: &str) {
    let goaway = client.goaway(WAIT).await;
    assert_eq!(goaway.reason(), reason, "{goaway:?}");
    assert_eq!(goaway.debug_data().as_ref(), debug.as_bytes(), "{goaway:?}");
    client.expect_closed(WAIT).await;
    assert_eq!(bed.driver.record(|r| r.streams), 0, "a stream reached the driver");
}

// --- header blocks (h2's codec limits, surfaced by the bridge) -----------

/// HEADERS then CONTINUATIONs without END_HEADERS, each small: h2's codec
/// allows max(header list limit / frame size × 1.25, 5) = 5 CONTINUATIONs
/// for the bridge's 16 KiB header list limit; the sixth is a flood.
async fn continuation_flood(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let mut flood = raw_frame(HEADERS, 0, 1, &request_block(METHOD));
    for i in 0..1000 {
        let mut block = Vec::new();
        hpack_literal(&mut block, format!("x-flood-{i}").as_bytes(), b"v");
        flood.extend(raw_frame(CONTINUATION, 0, 1, &block));
    }
    let _ = client.send_raw(&flood).await; // the bridge may hang up midway
    refused(&bed, &mut client, Reason::ENHANCE_YOUR_CALM, "too_many_continuations").await;
}

/// 1 MiB of header fields in CONTINUATIONs of 16,000 bytes each (one field
/// of 15,980 bytes per frame): h2's codec stops decoding at 4 × the 16 KiB
/// limit ("way too large"), before the CONTINUATION count is reached.
async fn a_megabyte_of_headers(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let mut blob = raw_frame(HEADERS, 0, 1, &request_block(METHOD));
    let value = vec![b'a'; 15_980];
    let frames = (1 << 20) / 16_000;
    for i in 0..frames {
        let mut block = Vec::new();
        hpack_literal(&mut block, format!("x-big-{i:02}").as_bytes(), &value);
        let flags = if i + 1 == frames { END_HEADERS } else { 0 };
        blob.extend(raw_frame(CONTINUATION, flags, 1, &block));
    }
    let _ = client.send_raw(&blob).await;
    refused(&bed, &mut client, Reason::ENHANCE_YOUR_CALM, "too_many_continuations").await;
}

/// A header block of a few KiB that decodes to `copies` × 4 KiB: one
/// 4,000-byte field put in HPACK's dynamic table, then referenced by its
/// one-byte index `copies` times.
fn amplified_headers(stream: u32, copies: usize) -> Vec<u8> {
    let mut block = request_block(METHOD);
    block.push(0x40); // literal with incremental indexing, new name
    hpack_int(&mut block, 7, 0, 3);
    block.extend_from_slice(b"x-a");
    hpack_int(&mut block, 7, 0, 4000);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0x80 | 62, copies)); // indexed: the first dynamic entry
    raw_frame(HEADERS, END_HEADERS, stream, &block)
}

/// 1 MiB of headers from 4 KiB on the wire, by HPACK indexing: h2's codec
/// stops at 4 × the 16 KiB limit ("way too large").
async fn a_megabyte_of_headers_by_hpack_indexing(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let _ = client.send_raw(&amplified_headers(1, 256)).await;
    refused(&bed, &mut client, Reason::ENHANCE_YOUR_CALM, "header_list_way_too_large").await;
}

// --- frame checks: GOAWAY PROTOCOL_ERROR ----------------------------------

async fn protocol_error(role: Role, bytes: &[u8], reason: Reason, debug: &str) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    client.send_raw(bytes).await.unwrap();
    refused(&bed, &mut client, reason, debug).await;
}

/// A client may open only odd streams (RFC 9113 §5.1.1): the bridge's own check.
async fn even_stream_id(role: Role) {
    protocol_error(role, &request_headers(2, METHOD, true), Reason::PROTOCOL_ERROR, "even stream id from a client")
        .await;
}

/// DATA must name a stream (§6.1): h2's codec refuses it, no debug data.
async fn data_on_stream_zero(role: Role) {
    protocol_error(role, &raw_frame(DATA, 0, 0, b"hello"), Reason::PROTOCOL_ERROR, "").await;
}

/// A window increment of 0 is a PROTOCOL_ERROR (§6.9); on the connection
/// a connection error. On a stream RFC 9113 makes it a stream error; h2's
/// codec (0.4.20) ends the connection for it too: today's behaviour, named.
async fn zero_window_increment(role: Role) {
    protocol_error(role, &raw_window_update(0, 0), Reason::PROTOCOL_ERROR, "").await;
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let mut bytes = request_headers(1, METHOD, false);
    bytes.extend(raw_window_update(1, 0));
    client.send_raw(&bytes).await.unwrap();
    let goaway = client.goaway(WAIT).await;
    assert_eq!((goaway.reason(), goaway.last_stream_id()), (Reason::PROTOCOL_ERROR, StreamId::from(1)));
    client.expect_closed(WAIT).await;
}

/// ENABLE_PUSH must be 0 or 1 (§6.5.2).
async fn enable_push_two(role: Role) {
    protocol_error(role, &raw_settings(&[(0x2, 2)]), Reason::PROTOCOL_ERROR, "").await;
}

/// INITIAL_WINDOW_SIZE above 2^31−1: RFC 9113 §6.5.2 asks for
/// FLOW_CONTROL_ERROR; h2's codec (0.4.20) answers PROTOCOL_ERROR, and the
/// bridge passes on what its codec reports. Today's behaviour, named.
async fn initial_window_above_max(role: Role) {
    protocol_error(role, &raw_settings(&[(0x4, 1 << 31)]), Reason::PROTOCOL_ERROR, "").await;
}

/// After the bridge's GOAWAY nothing the client sends is served: a
/// complete call right behind the broken frame gets no answer and never
/// reaches the driver. And a client's own GOAWAY (which only concerns
/// streams the bridge would open, and it opens none) leaves its later
/// calls served, as RFC 9113 §6.8 allows.
async fn frames_after_goaway(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let mut bytes = request_headers(2, METHOD, true);
    bytes.extend(request_headers(3, METHOD, false));
    bytes.extend(raw_frame(DATA, END_STREAM, 3, &grpc(b"after")));
    let _ = client.send_raw(&bytes).await;
    let goaway = client.goaway(WAIT).await;
    assert_eq!(goaway.reason(), Reason::PROTOCOL_ERROR);
    client.expect_closed(WAIT).await;
    let stream_3 = client.seen.iter().any(|f| matches!(f, Frame::Headers(h) if u32::from(h.stream_id()) == 3));
    assert!(!stream_3, "answered a call sent after the protocol error: {:?}", client.seen);
    assert_eq!(bed.driver.record(|r| r.streams), 0);

    let mut client = bed.client(role).await;
    client.send_raw(&raw_frame(0x7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0])).await.unwrap(); // GOAWAY NO_ERROR
    let answer = client.call(1, b"after my goaway").await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    assert_eq!(&answer.body[..], &grpc(b"after my goaway")[..]);
}

/// Frames of unknown types are ignored (§5.5), on the connection and on a
/// stream; a call right after them works.
async fn unknown_frame_types(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let mut bytes = raw_frame(0xfa, 0xff, 0, b"unknown on the connection");
    bytes.extend(raw_frame(0x0b, 0, 1, &[7u8; 1000]));
    bytes.extend(raw_frame(0xee, 0, 0x7fff_ffff, b""));
    client.send_raw(&bytes).await.unwrap();
    let answer = client.call(1, b"still here").await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    assert_eq!(&answer.body[..], &grpc(b"still here")[..]);
    assert_eq!(bed.driver.record(|r| r.bodies.clone()), vec![grpc(b"still here")]);
}

// --- the bridge's own limits ----------------------------------------------

/// A connection window raised past 2^31−1 is the client's
/// FLOW_CONTROL_ERROR (§6.9.1), answered by the bridge and never passed
/// on; the driver's connection goes with the client's and is not dialled
/// again (no redial loop).
async fn connection_window_overflow(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let answer = client.call(1, b"before").await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"));
    assert_eq!(bed.driver.accepted(), 1);
    client.send_raw(&raw_window_update(0, MAX_WINDOW)).await.unwrap();
    let goaway = client.goaway(WAIT).await;
    assert_eq!(goaway.reason(), Reason::FLOW_CONTROL_ERROR, "{goaway:?}");
    assert_eq!(goaway.debug_data().as_ref(), b"connection window above 2^31-1");
    assert_eq!(goaway.last_stream_id(), StreamId::from(1));
    client.expect_closed(WAIT).await;
    // Watch the driver's accepts for a while: a redial loop would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bed.driver.accepted(), 1, "the driver was dialled again");
    assert_eq!(bed.driver.record(|r| r.streams), 1);
}

/// Rapid reset (CVE-2023-44487): HEADERS + RST_STREAM pairs, up to
/// 100,000 or 5 s of sending. The bridge's budget (100 at once, 10/s)
/// ends the connection with ENHANCE_YOUR_CALM; far fewer streams reach
/// the driver; a client alongside keeps working.
async fn rapid_reset(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut bystander = bed.client(role).await;
    assert_eq!(bystander.call(1, b"first").await.grpc_status().as_deref(), Some("0"));
    let mut client = bed.client(role).await;
    let started = tokio::time::Instant::now();
    let (mut id, mut pairs) = (1u32, 0u32);
    'send: while pairs < 100_000 && started.elapsed() < Duration::from_secs(5) {
        let mut batch = Vec::new();
        for _ in 0..500 {
            batch.extend(request_headers(id, METHOD, false));
            batch.extend(raw_rst(id, 0x8)); // CANCEL
            id += 2;
            pairs += 1;
        }
        if client.send_raw(&batch).await.is_err() {
            break 'send;
        }
    }
    let goaway = client.goaway(WAIT).await;
    assert_eq!(goaway.reason(), Reason::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(goaway.debug_data().as_ref(), b"too many stream resets");
    client.expect_closed(WAIT).await;
    let reached = bed.driver.record(|r| r.streams);
    assert!(reached <= 200, "{reached} of {pairs} reset streams reached the driver");
    let answer = bystander.call(3, b"still served").await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    assert_eq!(&answer.body[..], &grpc(b"still served")[..]);
}

/// A body of 200 KiB in DATA frames of 200 bytes with 255 bytes of
/// padding each: the driver gets the exact payload, no padding, and the
/// call completes although the padding alone (256 KiB) is four windows
/// (the bridge must hand the padding's window back itself).
async fn padded_request_data(role: Role) {
    let bed = Bed::start(DriverOptions::default()).await;
    let mut client = bed.client(role).await;
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let message = grpc(&body);
    client.open(1, METHOD, false).await.unwrap();
    client.send_body(1, &message, 200, 255, WAIT).await;
    let answer = client.answer(1, WAIT).await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    assert_eq!(bed.driver.record(|r| r.bodies.clone()), vec![message.clone()]);
    assert_eq!(&answer.body[..], &message[..]);
}

/// The driver answers 100 KiB in padded DATA frames (100 bytes, 255 of
/// padding): the client gets the exact payload, and the answer does not
/// stall on the window the padding took (262 KiB, four windows).
async fn padded_answer_data(role: Role) {
    let bed = Bed::start(DriverOptions { reply: Reply::Padded { chunk: 100, pad: 255 }, ..Default::default() }).await;
    let mut client = bed.client(role).await;
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 253) as u8).collect();
    let answer = client.call(1, &body).await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    assert_eq!(&answer.body[..], &grpc(&body)[..]);
}

/// PINGs belong to their hop: the client's is answered by the bridge with
/// its payload and never reaches the driver; the driver's is answered by
/// the bridge and never reaches the client.
async fn pings_stay_on_their_hop(role: Role) {
    let bed = Bed::start(DriverOptions { ping: Some(*b"driver!!"), ..Default::default() }).await;
    let mut client = bed.client(role).await;
    client.send(Ping::new(*b"client!!")).await.unwrap();
    let pong = client
        .until(WAIT, |f| match f {
            Frame::Ping(p) if p.is_ack() => Some(*p.payload()),
            _ => None,
        })
        .await
        .expect("an answer to the client's PING");
    assert_eq!(&pong, b"client!!");
    let answer = client.call(1, b"ping").await;
    assert_eq!(answer.grpc_status().as_deref(), Some("0"));
    wait_for("the driver's PING answered", || bed.driver.record(|r| !r.pongs.is_empty())).await;
    assert_eq!(bed.driver.record(|r| r.pongs.clone()), vec![*b"driver!!"]);
    assert_eq!(bed.driver.record(|r| r.pings), 0, "a PING reached the driver");
    // One more round trip, so anything the driver's PING became is read.
    assert_eq!(client.call(3, b"ping").await.grpc_status().as_deref(), Some("0"));
    let leaked = client.seen.iter().any(|f| matches!(f, Frame::Ping(p) if p.payload() == b"driver!!"));
    assert!(!leaked, "the driver's PING reached the client: {:?}", client.seen);
}

/// A client that connects while the next hop is down gets the bridge's
/// SETTINGS and the ACK of its own at once; when the next hop comes up,
/// the driver receives no SETTINGS ACK it did not ask for, and the
/// client's calls work on the same connection.
async fn settings_acks_reach_only_their_owner(role: Role) {
    let mut bed = DownBed::start(role, DriverOptions::default()).await;
    let mut client = bed.client().await;
    // Acknowledged by hand, late: an ACK of the bridge's own SETTINGS
    // then arrives while the next hop is up, and must stop at the bridge.
    client.polite = false;
    client.send_raw(&raw_settings(&[(0x4, 1 << 20)])).await.unwrap();
    let (mut theirs, mut acks) = (0, 0);
    while theirs < 1 || acks < 2 {
        match client.next(WAIT).await {
            Event::Frame(Frame::Settings(s)) if s.is_ack() => acks += 1,
            Event::Frame(Frame::Settings(_)) => theirs += 1,
            Event::Frame(_) => {}
            other => panic!("no SETTINGS and ACKs from the bridge: {other:?}; seen {:?}", client.seen),
        }
    }
    assert_eq!((theirs, acks), (1, 2), "the bridge's own SETTINGS, the ACKs of both of the client's");
    bed.next_hop_up().await;
    // The next hop's SETTINGS, passed on once it answered.
    client
        .until(WAIT, |f| matches!(f, Frame::Settings(s) if !s.is_ack()).then_some(()))
        .await
        .expect("the next hop's SETTINGS");
    let unacked = client.seen.iter().filter(|f| matches!(f, Frame::Settings(s) if !s.is_ack())).count();
    for _ in 0..unacked {
        client.send(Settings::ack()).await.unwrap();
    }
    client.polite = true;
    for id in [1, 3, 5] {
        let answer = client.call(id, b"after the hop came up").await;
        assert_eq!(answer.grpc_status().as_deref(), Some("0"), "{answer:?}");
    }
    // The driver has read the ACKs once the answers are back.
    let record = bed.driver().record(|r| (r.acks, r.unasked_acks, r.settings));
    assert_eq!(record.1, 0, "the driver got SETTINGS ACKs it did not ask for: (acks, unasked, settings) {record:?}");
    assert_eq!(record.0, 1, "the driver's SETTINGS acknowledged once: {record:?}");
    assert!(record.2 >= 1, "the client's SETTINGS reached the driver: {record:?}");
}

/// Five calls wait for the next hop; the driver takes two streams at once
/// (MAX_CONCURRENT_STREAMS 2) and answers each after 300 ms: it never
/// sees more than two open, and all five complete.
async fn max_streams_of_the_next_hop_on_resume(role: Role) {
    let options = DriverOptions { max_streams: Some(2), delay: Duration::from_millis(300), ..Default::default() };
    let mut bed = DownBed::start(role, options).await;
    let mut client = bed.client().await;
    let ids = [1, 3, 5, 7, 9];
    for id in ids {
        client.open(id, METHOD, false).await.unwrap();
        client.send_raw(&raw_frame(DATA, END_STREAM, id, &grpc(format!("call {id}").as_bytes()))).await.unwrap();
    }
    bed.next_hop_up().await;
    let answers = client.answers(&ids, WAIT).await;
    for id in ids {
        let answer = &answers[&id];
        assert_eq!(answer.grpc_status().as_deref(), Some("0"), "call {id}: {answer:?}");
        assert_eq!(&answer.body[..], &grpc(format!("call {id}").as_bytes())[..]);
    }
    let (max_open, streams) = bed.driver().record(|r| (r.max_open, r.streams));
    assert_eq!(streams, 5);
    assert!(max_open <= 2, "the driver saw {max_open} streams open at once");
}

/// A client that opens every window to the maximum and then never reads,
/// while the driver offers 200 MiB: the bridge (a child process) reads
/// the driver only as fast as it can write to the client, so the driver
/// stalls far short of 200 MiB and the bridge's resident memory stays
/// under 64 MiB.
async fn slow_reader_keeps_memory_bounded(role: Role) {
    let driver: Arc<OnceLock<FrameDriver>> = Arc::default();
    let slot = driver.clone();
    let options = DriverOptions { reply: Reply::Stream { total: 200 << 20 }, ..Default::default() };
    let mut chain = ProcessChain::start_with_driver(&[], &[], &[], move |socket| {
        Box::pin(async move {
            let _ = slot.set(FrameDriver::serve(&socket, options));
            None
        })
    })
    .await;
    let driver = driver.get().unwrap().clone();
    let io = match role {
        Role::Shim => boxed(tokio::net::UnixStream::connect(&chain.shim_socket).await.unwrap()),
        Role::Relay => relay_tls(chain.relay_addr.parse().unwrap(), &chain.pki).await,
    };
    let mut client = RawClient::over(io, false).await;
    let mut opening = raw_settings(&[(0x4, MAX_WINDOW)]);
    opening.extend(raw_window_update(0, MAX_WINDOW - 65_535));
    opening.extend(request_headers(1, METHOD, false));
    opening.extend(raw_frame(DATA, END_STREAM, 1, &grpc(b"a lot, please")));
    client.send_raw(&opening).await.unwrap();
    // From here the client reads nothing. Wait until the driver stalls.
    let (mut last, mut still) = (0u64, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while still < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sent = driver.record(|r| r.sent);
        if sent == last && sent > 0 {
            still += 1;
        } else {
            still = 0;
        }
        last = sent;
    }
    let sent = driver.record(|r| r.sent);
    assert!(sent > 0, "the driver never answered");
    let bridge = match role {
        Role::Shim => &mut chain.shim,
        Role::Relay => &mut chain.relay,
    };
    assert!(bridge.is_running());
    let rss = rss_kib(bridge.pid());
    eprintln!("{role:?}: the driver pushed {sent} bytes before it stalled; {} resident: {rss} KiB", bridge.name);
    assert!(rss < 64 * 1024, "{}: {rss} KiB resident after the driver pushed {sent} bytes", bridge.name);
    let relay_rss = rss_kib(chain.relay.pid());
    assert!(relay_rss < 64 * 1024, "relay: {relay_rss} KiB resident after the driver pushed {sent} bytes");
    assert!(sent < 200 << 20, "the driver pushed all of its {sent} bytes: nothing held it back");
    drop(client);
}

// --- what the relay relies on in h2's codec (pinned with `=0.4.20`) -------

/// A `Cursor` is no tokio IO; this one is, and reads from a buffer.
struct Reader(std::io::Cursor<Vec<u8>>);

/// The CONTINUATION limit, and how a header list over the limit surfaces:
/// as a frame flagged `is_over_size()` (the bridge answers the stream
/// RESOURCE_EXHAUSTED), not as an error, up to 4 × the limit; beyond, a
/// connection error ENHANCE_YOUR_CALM. An h2 upgrade that changes any of
/// this fails here first.
#[tokio::test]
async fn h2_pin_header_limits() {
    let limit = 16 * 1024;
    let next = |bytes: Vec<u8>| async move {
        let mut codec: h2::Codec<Reader, Bytes> = h2::Codec::new(Reader(std::io::Cursor::new(bytes)));
        codec.set_max_recv_header_list_size(limit);
        codec.next().await
    };
    // Five CONTINUATIONs without END_HEADERS pass, the sixth is a flood.
    let mut block = raw_frame(HEADERS, 0, 1, &request_block(METHOD));
    for _ in 0..5 {
        block.extend(raw_frame(CONTINUATION, 0, 1, &[]));
    }
    let mut five = block.clone();
    five.extend(raw_frame(CONTINUATION, END_HEADERS, 1, &[]));
    assert!(matches!(next(five).await, Some(Ok(Frame::Headers(_)))));
    block.extend(raw_frame(CONTINUATION, 0, 1, &[]));
    match next(block).await {
        Some(Err(h2::proto::Error::GoAway(debug, Reason::ENHANCE_YOUR_CALM, _))) => {
            assert_eq!(&debug[..], b"too_many_continuations")
        }
        other => panic!("a CONTINUATION flood: {other:?}"),
    }
    // 20 KiB of fields: over the limit, but a frame, flagged.
    let mut fields = request_block(METHOD);
    hpack_literal(&mut fields, b"x-big", &vec![b'a'; 20 * 1024]);
    let mut over = raw_frame(HEADERS, 0, 1, &fields[..16_000]);
    over.extend(raw_frame(CONTINUATION, END_HEADERS, 1, &fields[16_000..]));
    match next(over).await {
        Some(Ok(Frame::Headers(headers))) => assert!(headers.is_over_size(), "not flagged over size"),
        other => panic!("20 KiB of headers: {other:?}"),
    }
    // A field split across CONTINUATIONs of a block already over the
    // limit: h2 stops buffering with COMPRESSION_ERROR.
    let mut fields = request_block(METHOD);
    for i in 0..5 {
        hpack_literal(&mut fields, format!("x-big-{i}").as_bytes(), &vec![b'a'; 15_000]);
    }
    let mut split = Vec::new();
    let chunks: Vec<&[u8]> = fields.chunks(16_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        split.extend(raw_frame(kind, if i + 1 == chunks.len() { END_HEADERS } else { 0 }, 1, chunk));
    }
    match next(split).await {
        Some(Err(h2::proto::Error::GoAway(debug, Reason::COMPRESSION_ERROR, _))) => assert!(debug.is_empty()),
        other => panic!("75 KiB of headers, fields split across frames: {other:?}"),
    }
    // Beyond 4 × the limit once decoded (HPACK's table makes that cheap),
    // a connection error ENHANCE_YOUR_CALM.
    match next(amplified_headers(1, 100)).await {
        Some(Err(h2::proto::Error::GoAway(debug, Reason::ENHANCE_YOUR_CALM, _))) => {
            assert_eq!(&debug[..], b"header_list_way_too_large")
        }
        other => panic!("HPACK-amplified headers: {other:?}"),
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = std::io::Read::read(&mut self.0, buf.initialize_unfilled())?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Reader {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts the writes that reach the socket.
struct CountingIo {
    writes: Arc<AtomicUsize>,
    bytes: Vec<u8>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut n = 0;
        for buf in bufs {
            self.bytes.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Write batching: frames buffered one after another while `poll_ready`
/// says so leave in one write at the flush (the relay queues a read's
/// answers, then flushes once). Small DATA is copied into the buffer like
/// the rest.
#[tokio::test]
async fn h2_pin_frames_buffered_before_a_flush_leave_in_one_write() {
    let writes = Arc::new(AtomicUsize::new(0));
    let mut codec: h2::Codec<CountingIo, Bytes> =
        h2::Codec::new(CountingIo { writes: writes.clone(), bytes: Vec::new() });
    let mut settings = Settings::default();
    settings.set_max_concurrent_streams(Some(2));
    let mut frames: Vec<Frame> = vec![
        settings.into(),
        Settings::ack().into(),
        WindowUpdate::new(StreamId::zero(), 1000).into(),
        Ping::pong(*b"12345678").into(),
        h2::frame::Data::new(StreamId::from(1), Bytes::from_static(b"small")).into(),
        h2::frame::Reset::new(StreamId::from(3), Reason::CANCEL).into(),
    ];
    let count = frames.len();
    std::future::poll_fn(|cx| {
        for frame in frames.drain(..) {
            assert!(codec.poll_ready(cx).is_ready(), "the codec took fewer than {count} small frames before a flush");
            codec.buffer(frame).unwrap();
        }
        assert_eq!(writes.load(Ordering::SeqCst), 0, "buffering wrote");
        codec.flush(cx)
    })
    .await
    .unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), 1, "{count} buffered frames left in more than one write");
    let written = codec.get_ref().bytes.len();
    assert_eq!(written, 15 + 9 + 13 + 17 + 14 + 13, "bytes written");
}
