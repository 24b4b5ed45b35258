//! File descriptors at start: raise the soft `RLIMIT_NOFILE` to the hard
//! limit (as Go's runtime does), then make sure the connection limit fits
//! in it. A client connection holds two descriptors (the client's and the
//! next hop's), a handshake in progress one, and the process needs a few of
//! its own (listeners, the runtime, certificate files, the admin endpoint).

use crate::pipeline::ServerSettings;

/// Descriptors kept for the process itself.
pub const RESERVED: u64 = 64;
/// Fewer connections than this is no service: refuse to start instead.
pub const MIN_CONNECTIONS: usize = 4;

/// Descriptors needed for `connections` clients and `handshakes` in progress.
pub fn needed(connections: usize, handshakes: usize) -> u64 {
    (connections as u64).saturating_mul(2).saturating_add(handshakes as u64).saturating_add(RESERVED)
}

/// How `asked` connections fit in a limit of `limit` descriptors.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Only this many fit.
    Lowered(usize),
    /// Not even [`MIN_CONNECTIONS`] fit.
    TooLow,
}

pub fn fit(limit: u64, asked: usize, handshakes: usize) -> Fit {
    if needed(asked, handshakes) <= limit {
        return Fit::Fits;
    }
    let room = limit.saturating_sub(handshakes as u64 + RESERVED) / 2;
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < MIN_CONNECTIONS {
        Fit::TooLow
    } else {
        Fit::Lowered(room)
    }
}

/// Raises the soft descriptor limit to the hard one; the soft limit in
/// force afterwards (`None`: unlimited).
pub fn raise_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (before.current, before.maximum) {
        if soft < hard {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the file descriptor limit to the hard limit"),
                Err(e) => {
                    tracing::info!(soft, hard, error = %e, "cannot raise the file descriptor limit to the hard limit")
                }
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Raises the limit and fits `settings.max_connections` (and `handshakes`
/// in progress) in it: lowered with a warning naming both figures, or an
/// error when not even a few connections would fit.
pub fn fit_connections(settings: &mut ServerSettings, handshakes: usize) -> anyhow::Result<()> {
    let Some(limit) = raise_limit() else {
        return Ok(());
    };
    let asked = settings.max_connections;
    match fit(limit, asked, handshakes) {
        Fit::Fits => Ok(()),
        Fit::Lowered(room) => {
            tracing::warn!(
                descriptor_limit = limit,
                max_connections = asked,
                needed = needed(asked, handshakes),
                serving_at_most = room,
                "the file descriptor limit (RLIMIT_NOFILE) is {limit}, too low for --max-connections {asked} \
                 (needs {}: two per connection, {handshakes} for handshakes, {RESERVED} spare); serving at most \
                 {room} connections; raise LimitNOFILE (systemd) or ulimit -n",
                needed(asked, handshakes)
            );
            settings.max_connections = room;
            Ok(())
        }
        Fit::TooLow => anyhow::bail!(
            "the file descriptor limit (RLIMIT_NOFILE) is {limit}: too low to serve even {MIN_CONNECTIONS} connections \
             (that needs {} descriptors with {handshakes} for handshakes); raise LimitNOFILE (systemd) or ulimit -n{}",
            needed(MIN_CONNECTIONS, handshakes),
            if handshakes > 0 { ", or lower --max-handshakes" } else { "" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_or_are_lowered_or_refused() {
        assert_eq!(needed(1024, 144), 2048 + 144 + 64);
        assert_eq!(fit(65536, 1024, 144), Fit::Fits);
        assert_eq!(fit(2048 + 144 + 64, 1024, 144), Fit::Fits);
        assert_eq!(fit(2048 + 144 + 63, 1024, 144), Fit::Lowered(1023));
        // The usual soft limit of 1024, before it is raised.
        assert_eq!(fit(1024, 1024, 144), Fit::Lowered((1024 - 144 - 64) / 2));
        assert_eq!(fit(200, 1024, 0), Fit::Lowered(68));
        assert_eq!(fit(64 + 8, 1024, 0), Fit::Lowered(4));
        assert_eq!(fit(64 + 7, 1024, 0), Fit::TooLow);
        assert_eq!(fit(100, 1024, 144), Fit::TooLow);
        assert_eq!(fit(u64::MAX, usize::MAX / 4, 144), Fit::Fits);
    }
}
