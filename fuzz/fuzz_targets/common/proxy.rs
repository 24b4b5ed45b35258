//! The proxy's parsers with arbitrary input, shared by the `proxy` fuzz
//! target and `tests/fuzz_regressions.rs`. The first byte picks the parser:
//! 0 the CONNECT answer, 1 a `--proxy` URL, 2 a `no_proxy` list (then a
//! host after the first newline).
//!
//! Properties:
//! - no panic;
//! - an accepted answer has a status in 100..=599 and a status line of at
//!   most 120 printable ASCII characters; `answer_end` stays in bounds;
//! - an accepted URL shows no password (`user:***`), and its display
//!   parses back to the same host, port and user;
//! - a refusal is one line and does not repeat the password (of 4 or more
//!   characters, not found elsewhere in the text nor in the parser's own
//!   wording);
//! - a list holding `*` excludes every host.

use openshell_driver_bridge::connect::proxy::{answer_end, parse_answer, NoProxy, ProxyUrl};

pub fn run(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 3 {
        0 => {
            if let Some(end) = answer_end(rest) {
                assert!(end <= rest.len() && rest[..end].ends_with(b"\r\n\r\n"));
            }
            if let Ok(answer) = parse_answer(rest) {
                assert!((100..=599).contains(&answer.status), "{answer:?}");
                assert!(
                    answer.line.len() <= 120 && answer.line.bytes().all(|b| (0x20..0x7f).contains(&b)),
                    "{answer:?}"
                );
            }
        }
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            match text.parse::<ProxyUrl>() {
                Ok(url) => {
                    let shown = url.to_string();
                    let again: ProxyUrl = shown.parse().unwrap_or_else(|e| panic!("{text:?} shown as {shown:?}: {e}"));
                    assert_eq!(
                        (&again.host, again.port, again.user(), again.tls),
                        (&url.host, url.port, url.user(), url.tls),
                        "{text:?}"
                    );
                    if let Some(password) = secret(text).filter(|p| *p != "***") {
                        assert!(!shown.contains(&format!(":{password}@")), "{text:?} shown as {shown:?}");
                    }
                }
                Err(message) => {
                    assert!(!message.contains(['\n', '\r']), "refusal is not one line: {message:?}");
                    if let Some(password) = secret(text) {
                        assert!(
                            password.len() < 4 || !message.contains(password) || in_wording(password),
                            "{text:?}: refusal shows the password: {message}"
                        );
                    }
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let (list, host) = text.split_once('\n').unwrap_or((&text, "relay.example"));
            let port = u16::from(rest.len() as u8);
            let parsed = NoProxy::parse(list);
            let found = parsed.matching(host, port);
            if list.split([',', ' ', '\t']).any(|e| e.trim() == "*")
                && list.split([',', ' ', '\t']).filter(|e| !e.trim().is_empty()).count() <= 1024
            {
                assert!(found.is_some(), "{list:?} holds * yet {host:?} is not excluded");
            }
        }
    }
}

/// Whether `part` is in the parser's own wording, as its refusals of inputs
/// that hold no password show it (a password such as `tp:/` is found in
/// "expected http://..." without being shown).
fn in_wording(part: &str) -> bool {
    ["ftp://h", "http://u@h/x", "http://:p@h", "http://u@", "http://u:%zz@h", "http://u:%ff@h"]
        .iter()
        .filter_map(|text| text.parse::<ProxyUrl>().err())
        .any(|wording| wording.contains(part))
}

/// The password of `scheme://user:password@host`, if the text has one
/// that is not also found in the rest of the text.
fn secret(text: &str) -> Option<&str> {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let (userinfo, hostport) = rest.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty() && !hostport.contains(password) && !userinfo.split_once(':')?.0.contains(password))
        .then_some(password)
}
