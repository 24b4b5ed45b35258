//! Where a shim's upstream is: `--upstream https://HOST:PORT`, parsed once
//! into a host (as written, resolved at every connect) and a port. The
//! proxy code reads a proxy's `host:port` with the same parser.

/// An upstream as given by `--upstream https://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// `host:port`, with IPv6 hosts in brackets.
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let uri: http::Uri =
            text.parse().map_err(|e| format!("{text:?} is not a URL ({e}); expected https://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => {
                return Err(format!(
                    "{text:?}: scheme {other} is not supported; the bridge only speaks mTLS on the network (https://HOST:PORT)"
                ))
            }
            None => return Err(format!("{text:?} has no scheme; expected https://HOST:PORT")),
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("{text:?}: a path is not allowed; expected https://HOST:PORT"));
        }
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        if authority.contains('@') {
            return Err(format!("{text:?}: user information is not allowed; expected https://HOST:PORT"));
        }
        let host = uri.host().unwrap_or_default();
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').filter(|h| h.parse::<std::net::Ipv6Addr>().is_ok()),
            None => Some(host).filter(|h| !h.is_empty() && !h.contains(['[', ']'])),
        }
        .ok_or_else(|| format!("{text:?} has no usable host; expected https://HOST:PORT (IPv6 as https://[::1]:PORT)"))?
        .to_owned();
        let port = uri.port_u16().ok_or_else(|| format!("{text:?} has no port; expected https://HOST:PORT"))?;
        Ok(Upstream { host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let up: Upstream = "https://relay.example:7443".parse().unwrap();
        assert_eq!(up, Upstream { host: "relay.example".into(), port: 7443 });
        let v6: Upstream = "https://[::1]:7443".parse().unwrap();
        assert_eq!(v6.authority(), "[::1]:7443");
        for (bad, why) in [
            ("http://relay:80", "only speaks mTLS"),
            ("relay:7443", "scheme"),
            ("https://relay", "no port"),
            ("https://relay:7443/x", "path"),
            ("not a url", "not a URL"),
            ("https://:7443", "no usable host"),
            ("https://1[::1]:74", "no usable host"),
            ("https://user:pw@relay:7443", "user information"),
        ] {
            let err = bad.parse::<Upstream>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
