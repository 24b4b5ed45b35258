//! `listen::preface::expect_http2`: classifying the first bytes of every
//! accepted connection (shim socket and relay TLS port) as HTTP/2, HTTP/1.x,
//! garbage or silence, driven over `tokio::io::duplex`.
//!
//! Input: byte 0 picks how the rest is cut into writes (so classification
//! is tested when the opening arrives one byte, a few bytes or all at a
//! time); the rest is what the peer sends before closing its side.
//!
//! Properties:
//! - input starting with the 24-byte preface is handed on (`Ok`), and the
//!   stream replays exactly every byte the peer sent, nothing is answered;
//! - anything else is refused (`Err`);
//! - a strict prefix of the preface (the peer closed early) is `Silent`,
//!   never `Garbage` and never answered as HTTP/1;
//! - input opening with an HTTP/1 method token (`GET `, `POST `, ...) is
//!   `Http1`, however the bytes were cut into writes;
//! - `Http1` and only `Http1` gets an answer, and that answer is one
//!   complete HTTP/1.1 505 response whose content-length is right;
//! - `Http1` is only given to input starting with an upper-case letter.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use openshell_driver_bridge::connect::open::PREFACE as H2_PREFACE;
use openshell_driver_bridge::pipeline::preface::{expect_http2, Opening};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METHODS: &[&[u8]] =
    &[b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        // Paused time: a stall resolves at once instead of after the timeout.
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime")
    })
}

/// Cuts `data` into writes of 1 to 8 bytes chosen by `plan`, or one write
/// when `plan` is 0.
fn chunks(plan: u8, data: &[u8]) -> Vec<&[u8]> {
    if plan == 0 {
        return vec![data];
    }
    let mut state = u32::from(plan) | 0x100;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + (state % 8) as usize).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&plan, payload)) = data.split_first() else { return };

    let (opened, replayed, answer) = runtime().block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let parts: Vec<Vec<u8>> = chunks(plan, payload).into_iter().map(<[u8]>::to_vec).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                if client_write.write_all(&part).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            let _ = client_write.shutdown().await;
        });
        let opened = expect_http2(server, Duration::from_secs(10), "fuzz").await;
        let mut replayed = Vec::new();
        let opened = match opened {
            Ok(mut stream) => {
                stream.read_to_end(&mut replayed).await.expect("replay");
                Ok(())
            }
            Err(opening) => Err(opening),
        };
        let mut answer = Vec::new();
        let _ = client_read.read_to_end(&mut answer).await;
        let _ = writer.await;
        (opened, replayed, answer)
    });

    if payload.starts_with(H2_PREFACE) {
        assert_eq!(opened, Ok(()), "preface refused");
        assert_eq!(replayed, payload, "replayed bytes differ from what was sent");
        assert!(answer.is_empty(), "answered an HTTP/2 client: {answer:?}");
        return;
    }
    let Err(opening) = opened else { panic!("accepted without the preface: {payload:?}") };
    assert_ne!(opening, Opening::Http2, "Http2 given as a refusal");
    if H2_PREFACE.starts_with(payload) {
        assert_eq!(opening, Opening::Silent, "a prefix of the preface ({payload:?})");
    }
    if METHODS.iter().any(|m| payload.starts_with(m)) {
        assert_eq!(opening, Opening::Http1, "HTTP/1 request {payload:?} cut as {:?}", chunks(plan, payload));
    }
    if opening == Opening::Http1 {
        assert!(payload.first().is_some_and(u8::is_ascii_uppercase), "{payload:?} classified as HTTP/1");
        let text = String::from_utf8(answer).expect("answer is text");
        let (head, body) = text.split_once("\r\n\r\n").expect("answer has a header block");
        assert!(head.starts_with("HTTP/1.1 505 HTTP Version Not Supported\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "content-length disagrees: {text:?}");
        assert!(body.contains("HTTP/2 only"));
    } else {
        assert!(answer.is_empty(), "{payload:?}: {opening:?} but answered {answer:?}");
    }
});
