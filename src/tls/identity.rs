//! Certificate identity: the names a peer's certificate carries, and the
//! patterns an operator writes to say which of those names to trust.
//!
//! The relay authorizes clients by identity, never by "any certificate from
//! this CA", so this is where that decision is made concrete. Matching is
//! deliberately literal: a DNS pattern matches a DNS SAN exactly (ASCII case
//! insensitive, as DNS is), a URI or CN pattern matches byte for byte, and the
//! only wildcard is a trailing `/*` on a URI, which is how SPIFFE trust
//! domains and paths are delegated. A certificate's own wildcard SAN (for
//! example `*.corp`) is never expanded: a wildcard certificate does not name
//! one client, so it must not satisfy a pattern naming one.

use std::fmt;
use std::str::FromStr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::obs::escape::{for_log, LIMIT};

/// Longest pattern value accepted; far above any real name, low enough that
/// a pasted blob is refused instead of silently kept.
const MAX_PATTERN_LEN: usize = 1024;

/// The grammar, quoted in every pattern error so the fix is on screen.
const PATTERN_GRAMMAR: &str = "expected dns:NAME, uri:URI, uri:PREFIX/* or cn:NAME";

/// Why a certificate's identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    /// The certificate parsed, but its subject alternative names did not.
    #[error("certificate has a malformed subject alternative name extension: {0}")]
    SubjectAltName(String),
}

/// The names a certificate presents: DNS SANs, URI SANs (such as SPIFFE IDs)
/// and the subject common name.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// DNS subject alternative names, in certificate order.
    pub dns: Vec<String>,
    /// URI subject alternative names, in certificate order.
    pub uris: Vec<String>,
    /// The first subject common name, when it is a readable string.
    pub cn: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity of a DER-encoded certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
        let cert = parse_certificate(der)?;
        Self::from_x509(&cert)
    }

    /// Reads the identity of an already parsed certificate.
    pub fn from_x509(cert: &X509Certificate<'_>) -> Result<PeerIdentity, IdentityError> {
        let mut identity = PeerIdentity { cn: first_common_name(cert), ..PeerIdentity::default() };
        let san = cert.subject_alternative_name().map_err(|e| IdentityError::SubjectAltName(e.to_string()))?;
        for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(dns) => identity.dns.push((*dns).to_owned()),
                GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                _ => {}
            }
        }
        Ok(identity)
    }

    /// Every name, each in pattern syntax (`dns:x`, `uri:y`, `cn:z`), so an
    /// operator can paste one straight into an allow-list.
    /// Names come from the peer's certificate: they are escaped and bounded
    /// as any text from the wire (a name a pattern could match needs neither).
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        let dns = self.dns.iter().map(|d| format!("dns:{}", for_log(d, LIMIT)));
        let uris = self.uris.iter().map(|u| format!("uri:{}", for_log(u, LIMIT)));
        let cn = self.cn.iter().map(|c| format!("cn:{}", for_log(c, LIMIT)));
        dns.chain(uris).chain(cn)
    }

    /// True when the certificate carries no name at all.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.uris.is_empty() && self.cn.is_none()
    }
}

/// The most specific name: a URI SAN (workload identity) beats a DNS SAN,
/// which beats the legacy common name. Escaped and bounded: it is logged.
impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(uri) = self.uris.first() {
            write!(f, "uri:{}", for_log(uri, LIMIT))
        } else if let Some(dns) = self.dns.first() {
            write!(f, "dns:{}", for_log(dns, LIMIT))
        } else if let Some(cn) = &self.cn {
            write!(f, "cn:{}", for_log(cn, LIMIT))
        } else {
            f.write_str("(no identity)")
        }
    }
}

fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IdentityError::Parse(format!("{} unexpected bytes after the certificate", rest.len())));
    }
    Ok(cert)
}

/// The first CN that is a string type; a CN in an exotic encoding is
/// treated as absent rather than failing the whole identity.
fn first_common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject().iter_common_name().find_map(|attr| attr.as_str().ok()).map(str::to_owned)
}

/// One allow-list entry naming a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPattern {
    /// `dns:NAME`: a DNS SAN equal to NAME, ignoring ASCII case.
    Dns(String),
    /// `uri:URI`: a URI SAN equal to URI.
    Uri(String),
    /// `uri:PREFIX/*`: a URI SAN starting with the stored prefix, which
    /// keeps its trailing `/` so `spiffe://corp/edge/*` cannot match
    /// `spiffe://corp/edge-evil`.
    UriPrefix(String),
    /// `cn:NAME`: a subject common name equal to NAME.
    Cn(String),
}

impl IdentityPattern {
    /// Whether the peer presents a name this pattern accepts.
    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            IdentityPattern::Dns(name) => id.dns.iter().any(|d| d.eq_ignore_ascii_case(name)),
            IdentityPattern::Uri(uri) => id.uris.iter().any(|u| u == uri),
            IdentityPattern::UriPrefix(prefix) => id.uris.iter().any(|u| u.starts_with(prefix)),
            IdentityPattern::Cn(cn) => id.cn.as_deref() == Some(cn.as_str()),
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::Dns(name) => write!(f, "dns:{name}"),
            IdentityPattern::Uri(uri) => write!(f, "uri:{uri}"),
            IdentityPattern::UriPrefix(prefix) => write!(f, "uri:{prefix}*"),
            IdentityPattern::Cn(cn) => write!(f, "cn:{cn}"),
        }
    }
}

/// A pattern that does not follow the grammar; the message names the input,
/// the problem and the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identity pattern {input:?}: {problem}; {PATTERN_GRAMMAR}")]
pub struct PatternError {
    input: String,
    problem: String,
}

impl PatternError {
    fn new(input: &str, problem: impl Into<String>) -> Self {
        PatternError { input: truncate_for_message(input), problem: problem.into() }
    }
}

/// Keeps an error message one readable line even for a pasted blob.
fn truncate_for_message(input: &str) -> String {
    const SHOWN: usize = 80;
    match input.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

impl FromStr for IdentityPattern {
    type Err = PatternError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some((prefix, value)) = input.split_once(':') else {
            return Err(PatternError::new(input, "missing a kind prefix"));
        };
        // Prefixes are accepted in any case because `openssl x509 -text`
        // prints SANs as `DNS:...` and `URI:...`, and operators paste those.
        let kind = prefix.to_ascii_lowercase();
        if !matches!(kind.as_str(), "dns" | "uri" | "cn") {
            return Err(unknown_prefix(input, prefix));
        }
        check_value_common(input, value, kind == "cn")?;
        match kind.as_str() {
            "dns" => parse_dns(input, value),
            "uri" => parse_uri(input, value),
            _ => parse_cn(input, value),
        }
    }
}

fn unknown_prefix(input: &str, prefix: &str) -> PatternError {
    // `spiffe://corp/x` splits at the scheme's colon; point at the fix.
    let problem = if input.contains("://") {
        format!(
            "unknown kind {:?}; a URI needs the uri: prefix, as in {:?}",
            truncate_for_message(prefix),
            format!("uri:{}", truncate_for_message(input))
        )
    } else {
        format!("unknown kind {:?}; use dns:, uri: or cn:", truncate_for_message(prefix))
    };
    PatternError::new(input, problem)
}

/// Checks shared by every kind: non-empty, bounded, printable, no spaces
/// (a CN may hold single inner spaces: enterprise PKIs name subjects
/// "Edge Gateway 7").
fn check_value_common(input: &str, value: &str, inner_spaces: bool) -> Result<(), PatternError> {
    if value.is_empty() {
        return Err(PatternError::new(input, "the name after the prefix is empty"));
    }
    if value.len() > MAX_PATTERN_LEN {
        return Err(PatternError::new(
            input,
            format!("the name is {} bytes long, more than the limit of {MAX_PATTERN_LEN}", value.len()),
        ));
    }
    let spaced = inner_spaces && value.trim() == value && !value.contains("  ");
    if let Some(c) = value.chars().find(|c| (c.is_whitespace() && !(spaced && *c == ' ')) || c.is_control()) {
        return Err(PatternError::new(input, format!("contains whitespace or a control character ({c:?})")));
    }
    Ok(())
}

fn reject_star(input: &str, value: &str, kind: &str) -> Result<(), PatternError> {
    if value.contains('*') {
        return Err(PatternError::new(
            input,
            format!("wildcards are not allowed in {kind}: patterns (only a trailing /* in uri:)"),
        ));
    }
    Ok(())
}

fn parse_dns(input: &str, value: &str) -> Result<IdentityPattern, PatternError> {
    reject_star(input, value, "dns")?;
    // Certificates carry DNS names as A-labels; anything else is a typo or
    // a URI under the wrong prefix, and would silently never match.
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if let Some(c) = value.chars().find(|c| !valid(*c)) {
        return Err(PatternError::new(
            input,
            format!("{c:?} cannot appear in a DNS name (letters, digits, '-', '_' and '.' only)"),
        ));
    }
    Ok(IdentityPattern::Dns(value.to_owned()))
}

fn parse_cn(input: &str, value: &str) -> Result<IdentityPattern, PatternError> {
    reject_star(input, value, "cn")?;
    Ok(IdentityPattern::Cn(value.to_owned()))
}

fn parse_uri(input: &str, value: &str) -> Result<IdentityPattern, PatternError> {
    let (body, is_prefix) = match value.strip_suffix("/*") {
        Some(stem) => (stem, true),
        None => (value, false),
    };
    if body.contains('*') {
        return Err(PatternError::new(input, "'*' is only allowed as a trailing /* (as in uri:spiffe://corp/edge/*)"));
    }
    check_uri_scheme(input, body)?;
    Ok(if is_prefix { IdentityPattern::UriPrefix(format!("{body}/")) } else { IdentityPattern::Uri(value.to_owned()) })
}

/// URI SANs are absolute URIs (RFC 5280), so a pattern without a scheme can
/// never match; refusing it also stops `uri:/*` from meaning "anyone".
fn check_uri_scheme(input: &str, body: &str) -> Result<(), PatternError> {
    let scheme = body.split_once(':').map(|(scheme, _)| scheme);
    let valid = scheme.is_some_and(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if valid {
        Ok(())
    } else {
        Err(PatternError::new(input, "a URI must start with a scheme, as in uri:spiffe://corp/edge"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn pattern(s: &str) -> IdentityPattern {
        s.parse().unwrap()
    }

    fn parse_err(s: &str) -> String {
        s.parse::<IdentityPattern>().unwrap_err().to_string()
    }

    fn id(dns: &[&str], uris: &[&str], cn: Option<&str>) -> PeerIdentity {
        PeerIdentity {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            cn: cn.map(str::to_owned),
        }
    }

    fn cert_der(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns_san(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    fn uri_san(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn reads_all_names_from_a_certificate() {
        let der = cert_der(
            Some("gateway-1"),
            vec![
                dns_san("gw.example"),
                uri_san("spiffe://corp/edge/gw"),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                dns_san("gw2.example"),
            ],
        );
        let identity = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(identity, id(&["gw.example", "gw2.example"], &["spiffe://corp/edge/gw"], Some("gateway-1")));
        let names: Vec<String> = identity.names().collect();
        assert_eq!(names, ["dns:gw.example", "dns:gw2.example", "uri:spiffe://corp/edge/gw", "cn:gateway-1"]);
    }

    #[test]
    fn certificate_without_names_has_empty_identity() {
        let identity = PeerIdentity::from_der(&cert_der(None, vec![])).unwrap();
        assert!(identity.is_empty());
        assert_eq!(identity.to_string(), "(no identity)");
        assert_eq!(identity.names().count(), 0);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let err = PeerIdentity::from_der(b"not a certificate").unwrap_err();
        assert!(matches!(err, IdentityError::Parse(_)), "{err:?}");
        let mut der = cert_der(Some("x"), vec![]);
        der.extend_from_slice(b"trailing");
        let err = PeerIdentity::from_der(&der).unwrap_err();
        assert!(err.to_string().contains("unexpected bytes"), "{err}");
    }

    #[test]
    fn display_prefers_uri_then_dns_then_cn() {
        let full = id(&["a.example"], &["spiffe://corp/a"], Some("a"));
        assert_eq!(full.to_string(), "uri:spiffe://corp/a");
        assert_eq!(id(&["a.example"], &[], Some("a")).to_string(), "dns:a.example");
        assert_eq!(id(&[], &[], Some("a")).to_string(), "cn:a");
        let from_cert = PeerIdentity::from_der(&cert_der(Some("only-cn"), vec![])).unwrap();
        assert_eq!(from_cert.to_string(), "cn:only-cn");
    }

    #[test]
    fn names_from_a_certificate_are_escaped_when_shown() {
        let forged = id(&[], &[], Some("gw\n2026-01-01 INFO \"admin\" allowed"));
        assert_eq!(forged.to_string(), "cn:gw\\n2026-01-01 INFO \\\"admin\\\" allowed");
        assert_eq!(forged.names().collect::<Vec<_>>(), ["cn:gw\\n2026-01-01 INFO \\\"admin\\\" allowed"]);
        let long = id(&[], &[&format!("spiffe://corp/{}", "x".repeat(5000))], None);
        assert!(long.to_string().len() < 300, "{}", long.to_string().len());
    }

    #[test]
    fn parses_each_kind() {
        assert_eq!(pattern("dns:gw.example"), IdentityPattern::Dns("gw.example".into()));
        assert_eq!(pattern("uri:spiffe://corp/edge/gw"), IdentityPattern::Uri("spiffe://corp/edge/gw".into()));
        assert_eq!(pattern("uri:spiffe://corp/edge/*"), IdentityPattern::UriPrefix("spiffe://corp/edge/".into()));
        assert_eq!(pattern("cn:openshell-gateway"), IdentityPattern::Cn("openshell-gateway".into()));
    }

    #[test]
    fn prefixes_as_printed_by_openssl_are_accepted() {
        assert_eq!(pattern("DNS:gw.example"), IdentityPattern::Dns("gw.example".into()));
        assert_eq!(pattern("URI:spiffe://c/x"), IdentityPattern::Uri("spiffe://c/x".into()));
        assert_eq!(pattern("CN:x"), IdentityPattern::Cn("x".into()));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "dns:gw.example",
            "uri:spiffe://corp/edge/gw",
            "uri:spiffe://corp/edge/*",
            "uri:spiffe://corp/*",
            "cn:openshell-gateway",
        ] {
            let parsed = pattern(s);
            assert_eq!(parsed.to_string(), s);
            assert_eq!(pattern(&parsed.to_string()), parsed);
        }
    }

    #[test]
    fn dns_matches_ignoring_ascii_case_only() {
        let p = pattern("dns:GW.Example");
        assert!(p.matches(&id(&["other", "gw.example"], &[], None)));
        assert!(!p.matches(&id(&["gw.example.evil"], &[], None)));
        assert!(!p.matches(&id(&[], &[], Some("gw.example"))));
        // A wildcard SAN does not name this client.
        assert!(!pattern("dns:a.corp").matches(&id(&["*.corp"], &[], None)));
    }

    #[test]
    fn uri_and_cn_match_exactly() {
        let uri = pattern("uri:spiffe://corp/edge/gw");
        assert!(uri.matches(&id(&[], &["spiffe://corp/edge/gw"], None)));
        assert!(!uri.matches(&id(&[], &["SPIFFE://corp/edge/gw"], None)));
        assert!(!uri.matches(&id(&[], &["spiffe://corp/edge/gw/x"], None)));
        let cn = pattern("cn:Gateway");
        assert!(cn.matches(&id(&[], &[], Some("Gateway"))));
        assert!(!cn.matches(&id(&[], &[], Some("gateway"))));
        assert!(!cn.matches(&id(&["Gateway"], &[], None)));
    }

    #[test]
    fn uri_prefix_matches_below_the_prefix_only() {
        let p = pattern("uri:spiffe://corp/edge/*");
        assert!(p.matches(&id(&[], &["spiffe://corp/edge/gw-1"], None)));
        assert!(p.matches(&id(&[], &["spiffe://corp/edge/a/b"], None)));
        assert!(!p.matches(&id(&[], &["spiffe://corp/edge-evil/gw"], None)));
        assert!(!p.matches(&id(&[], &["spiffe://corp/edge"], None)));
        assert!(!p.matches(&id(&["spiffe://corp/edge/gw"], &[], None)));
    }

    #[test]
    fn patterns_match_generated_certificates() {
        let der = cert_der(Some("gateway"), vec![dns_san("gw.example"), uri_san("spiffe://corp/edge/gw")]);
        let identity = PeerIdentity::from_der(&der).unwrap();
        for p in ["dns:gw.example", "uri:spiffe://corp/edge/gw", "uri:spiffe://corp/*", "cn:gateway"] {
            assert!(pattern(p).matches(&identity), "{p}");
        }
        for p in ["dns:other", "uri:spiffe://corp/core/*", "cn:other"] {
            assert!(!pattern(p).matches(&identity), "{p}");
        }
    }

    #[test]
    fn rejects_missing_and_unknown_prefixes() {
        let err = parse_err("gw.example");
        assert!(err.contains("\"gw.example\""), "{err}");
        assert!(err.contains("missing a kind prefix"), "{err}");
        assert!(err.contains("dns:NAME, uri:URI, uri:PREFIX/* or cn:NAME"), "{err}");
        let err = parse_err("ip:10.0.0.1");
        assert!(err.contains("unknown kind \"ip\""), "{err}");
        assert!(err.contains("dns:, uri: or cn:"), "{err}");
        let err = parse_err("spiffe://corp/edge");
        assert!(err.contains("uri:spiffe://corp/edge"), "{err}");
    }

    #[test]
    fn rejects_empty_values() {
        for s in ["dns:", "uri:", "cn:", ":"] {
            assert!(s.parse::<IdentityPattern>().is_err(), "{s}");
        }
        assert!(parse_err("dns:").contains("empty"));
    }

    #[test]
    fn rejects_misplaced_wildcards() {
        for s in [
            "dns:*.corp",
            "cn:*",
            "uri:*",
            "uri:spiffe://corp/*/gw",
            "uri:spiffe://corp/edge*",
            "uri:spiffe://corp/*/*",
        ] {
            let err = parse_err(s);
            assert!(err.contains("'*'") || err.contains("wildcard"), "{s}: {err}");
        }
    }

    #[test]
    fn rejects_uris_without_a_scheme() {
        for s in ["uri:/*", "uri:corp/edge", "uri://corp/x", "uri:1x://a"] {
            let err = parse_err(s);
            assert!(err.contains("scheme"), "{s}: {err}");
        }
    }

    #[test]
    fn rejects_whitespace_and_control_characters() {
        for s in ["dns:gw example", "cn:a\tb", "uri:spiffe://c/x\n", "cn:\u{7}", "dns: gw", "cn: lead", "cn:a  b"] {
            let err = parse_err(s);
            assert!(err.contains("whitespace or a control character"), "{s:?}: {err}");
        }
    }

    #[test]
    fn a_common_name_may_hold_inner_spaces() {
        let pattern: IdentityPattern = "cn:Edge Gateway 7".parse().unwrap();
        let id = PeerIdentity { cn: Some("Edge Gateway 7".into()), ..Default::default() };
        assert!(pattern.matches(&id));
        assert_eq!(pattern.to_string(), "cn:Edge Gateway 7");
    }

    #[test]
    fn rejects_non_dns_characters_in_dns_patterns() {
        let err = parse_err("dns:https://gw.example");
        assert!(err.contains("cannot appear in a DNS name"), "{err}");
    }

    #[test]
    fn rejects_overlong_values_with_a_short_message() {
        let long = format!("cn:{}", "a".repeat(MAX_PATTERN_LEN + 1));
        let err = parse_err(&long);
        assert!(err.contains("more than the limit of 1024"), "{err}");
        assert!(err.len() < 300, "message should stay short: {err}");
        let ok = format!("cn:{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(ok.parse::<IdentityPattern>().is_ok());
    }
}
