//! The check of the `identity_pattern` fuzz target, shared with `tests/fuzz_regressions.rs`
//! so its regression inputs run under `cargo test` (the target's properties
//! are described in `fuzz_targets/identity_pattern.rs`).

use openshell_driver_bridge::tls::identity::{IdentityPattern, PeerIdentity};

/// Longest accepted value (identity.rs `MAX_PATTERN_LEN`).
const MAX_PATTERN_LEN: usize = 1024;
/// A refusal quotes at most 80 characters of the input, escaped; this
/// bound leaves room for that, the problem and the grammar.
const MAX_ERROR_LEN: usize = 2048;

fn identity(dns: &[&str], uris: &[&str], cn: Option<&str>) -> PeerIdentity {
    PeerIdentity {
        dns: dns.iter().map(|s| s.to_string()).collect(),
        uris: uris.iter().map(|s| s.to_string()).collect(),
        cn: cn.map(str::to_owned),
    }
}

fn has_scheme(uri: &str) -> bool {
    uri.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// `inner_spaces`: a CN may hold single spaces between words ("Edge
/// Gateway 7"), never leading, trailing or doubled ones.
fn check_value(input: &str, value: &str, inner_spaces: bool) {
    assert!(!value.is_empty(), "{input:?}: accepted an empty value");
    assert!(value.len() <= MAX_PATTERN_LEN, "{input:?}: accepted a value of {} bytes", value.len());
    let spaced = inner_spaces && value.trim() == value && !value.contains("  ");
    assert!(
        !value.chars().any(|c| (c.is_whitespace() && !(spaced && c == ' ')) || c.is_control()),
        "{input:?}: accepted whitespace or a control character"
    );
}

/// Checks the target's properties on one input (panics when one breaks).
pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let pattern = match input.parse::<IdentityPattern>() {
        Ok(pattern) => pattern,
        Err(e) => {
            let message = e.to_string();
            assert!(!message.contains(['\n', '\r']), "{input:?}: refusal is not one line: {message:?}");
            assert!(message.len() <= MAX_ERROR_LEN, "{input:?}: refusal is {} bytes long", message.len());
            return;
        }
    };

    // Round trip through the canonical text.
    let text = pattern.to_string();
    let again: IdentityPattern =
        text.parse().unwrap_or_else(|e| panic!("{input:?} -> {pattern:?} prints as {text:?}, which is refused: {e}"));
    assert_eq!(again, pattern, "{input:?}: {text:?} parses to a different pattern");
    assert_eq!(again.to_string(), text, "{input:?}: printing is not stable");
    let (prefix, _) = input.split_once(':').expect("accepted input has a kind prefix");

    // The grammar, and the matching rules, per kind.
    assert!(!pattern.matches(&PeerIdentity::default()), "{input:?} matches an identity with no names");
    match &pattern {
        IdentityPattern::Dns(name) => {
            assert!(prefix.eq_ignore_ascii_case("dns"), "{input:?}: kind changed to dns");
            check_value(input, name, false);
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
                "{input:?}: DNS pattern {name:?} holds a character no A-label has"
            );
            assert!(pattern.matches(&identity(&[name], &[], None)));
            assert!(pattern.matches(&identity(&[&name.to_ascii_uppercase()], &[], None)), "dns: must ignore case");
            assert!(pattern.matches(&identity(&["other.example", &name.to_ascii_lowercase()], &[], None)));
            assert!(!pattern.matches(&identity(&[&format!("{name}x")], &[], None)));
            assert!(!pattern.matches(&identity(&[&format!("x.{name}")], &[], None)), "dns: is not a suffix match");
            assert!(!pattern.matches(&identity(&[], &[name], Some(name))), "dns: must look at DNS SANs only");
        }
        IdentityPattern::Uri(uri) => {
            assert!(prefix.eq_ignore_ascii_case("uri"));
            check_value(input, uri, false);
            assert!(!uri.contains('*'), "{input:?}: wildcard kept in an exact URI");
            assert!(has_scheme(uri), "{input:?}: URI without a scheme accepted");
            assert!(pattern.matches(&identity(&[], &[uri], None)));
            assert!(!pattern.matches(&identity(&[], &[&format!("{uri}/x")], None)), "uri: is exact");
            if uri.chars().any(|c| c.is_ascii_alphabetic()) {
                let flipped: String = uri.chars().map(flip_ascii_case).collect();
                assert!(!pattern.matches(&identity(&[], &[&flipped], None)), "uri: must be case sensitive");
            }
            assert!(!pattern.matches(&identity(&[uri], &[], Some(uri))), "uri: must look at URI SANs only");
        }
        IdentityPattern::UriPrefix(stem) => {
            assert!(prefix.eq_ignore_ascii_case("uri"));
            assert!(input.ends_with("/*"), "{input:?}: prefix pattern without a trailing /*");
            assert!(stem.ends_with('/'), "{input:?}: stored prefix {stem:?} lost its trailing '/'");
            let body = &stem[..stem.len() - 1];
            assert!(!stem.contains('*'), "{input:?}: '*' inside a URI prefix");
            assert!(has_scheme(body), "{input:?}: URI prefix without a scheme (would be 'anyone')");
            check_value(input, &format!("{stem}*"), false);
            assert!(pattern.matches(&identity(&[], &[&format!("{stem}workload")], None)));
            assert!(!pattern.matches(&identity(&[], &[body], None)), "prefix must not match its own stem");
            assert!(!pattern.matches(&identity(&[], &[&format!("{body}-evil")], None)), "{input:?} matches a sibling");
            assert!(!pattern.matches(&identity(&[&format!("{stem}x")], &[], Some(&format!("{stem}x")))));
        }
        IdentityPattern::Cn(cn) => {
            assert!(prefix.eq_ignore_ascii_case("cn"));
            check_value(input, cn, true);
            assert!(!cn.contains('*'), "{input:?}: wildcard in a cn: pattern");
            assert!(pattern.matches(&identity(&[], &[], Some(cn))));
            assert!(!pattern.matches(&identity(&[cn], &[cn], None)), "cn: must look at the CN only");
            assert!(!pattern.matches(&identity(&[], &[], Some(&format!("{cn}x")))));
        }
    }
}

fn flip_ascii_case(c: char) -> char {
    if c.is_ascii_lowercase() {
        c.to_ascii_uppercase()
    } else {
        c.to_ascii_lowercase()
    }
}
