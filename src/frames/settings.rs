//! SETTINGS across a relay whose next hop comes and goes.
//!
//! Each side acknowledges SETTINGS in the order it received them, and an
//! acknowledgement must reach only the party whose SETTINGS it answers: an
//! ACK of the bridge's own SETTINGS (its opening ones, or the client's
//! re-sent to a new next hop) stops here, and an ACK of a lost next hop's
//! SETTINGS is not given to its successor. The ledger keeps, per side, the
//! owner of every SETTINGS frame still unacknowledged.

use std::collections::VecDeque;

use h2::frame::Settings;
use tokio::io::{AsyncRead, AsyncWrite};

use super::FrameRelay;

/// Whose SETTINGS the client is acknowledging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAck {
    /// The bridge's own.
    Bridge,
    /// The next hop's, on its connection of this generation.
    Upstream(u64),
}

/// Whose SETTINGS the next hop is acknowledging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamAck {
    /// The bridge's own (also the client's, re-sent after acknowledging them).
    Bridge,
    /// The client's, passed on.
    Client,
}

#[derive(Default)]
pub struct AckLedger {
    client: VecDeque<ClientAck>,
    upstream: VecDeque<UpstreamAck>,
    /// The next hop's connection now.
    pub generation: u64,
}

impl AckLedger {
    /// A new next-hop connection, which was sent the bridge's opening SETTINGS.
    pub fn new_upstream(&mut self) {
        self.generation += 1;
        self.upstream.clear();
        self.upstream.push_back(UpstreamAck::Bridge);
    }

    /// The next hop's connection is gone: how many of the client's SETTINGS
    /// passed to it went unacknowledged. The bridge owes the client those
    /// acknowledgements (the next connection gets the client's SETTINGS
    /// again, as the bridge's own).
    pub fn upstream_lost(&mut self) -> usize {
        let owed = self.upstream.iter().filter(|owner| **owner == UpstreamAck::Client).count();
        self.upstream.clear();
        owed
    }

    pub fn sent_client(&mut self, owner: ClientAck) {
        self.client.push_back(owner);
    }

    pub fn sent_upstream(&mut self, owner: UpstreamAck) {
        self.upstream.push_back(owner);
    }

    /// The client acknowledged: whether the ACK goes on to the current
    /// next hop. An ACK nobody waits for goes nowhere.
    pub fn client_acked(&mut self) -> bool {
        self.client.pop_front() == Some(ClientAck::Upstream(self.generation))
    }

    /// The next hop acknowledged: whether the ACK goes on to the client.
    pub fn upstream_acked(&mut self) -> bool {
        self.upstream.pop_front() == Some(UpstreamAck::Client)
    }
}

/// The bridge's own SETTINGS to a client: its limits, the rest default
/// (the next hop's own follow once it answers).
pub fn bridge_settings(max_streams: u32, header_list_limit: u32) -> Settings {
    let mut settings = Settings::default();
    settings.set_max_concurrent_streams(Some(max_streams));
    settings.set_max_header_list_size(Some(header_list_limit));
    settings
}

/// Folds `update` into `settings`: the client's SETTINGS as they stand.
pub fn merge_settings(settings: &mut Settings, update: &Settings) {
    if let Some(v) = update.header_table_size() {
        settings.set_header_table_size(Some(v));
    }
    if let Some(v) = update.is_push_enabled() {
        settings.set_enable_push(v);
    }
    if let Some(v) = update.max_concurrent_streams() {
        settings.set_max_concurrent_streams(Some(v));
    }
    if let Some(v) = update.initial_window_size() {
        settings.set_initial_window_size(Some(v));
    }
    if let Some(v) = update.max_frame_size() {
        settings.set_max_frame_size(Some(v));
    }
    if let Some(v) = update.max_header_list_size() {
        settings.set_max_header_list_size(Some(v));
    }
}

impl<C> FrameRelay<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// A SETTINGS frame to the client, remembering whose it is.
    pub(super) fn send_client_settings(&mut self, settings: Settings, owner: ClientAck) {
        self.acks.sent_client(owner);
        self.to_client.push_back(settings.into());
    }

    /// The client's SETTINGS: applied to the bridge's codecs, kept for the
    /// next hop's next connection, and passed on (or, while there is no
    /// next hop, acknowledged here).
    pub(super) fn client_settings(&mut self, settings: Settings) {
        if settings.is_ack() {
            if self.acks.client_acked() && !self.is_down() {
                self.to_upstream.push_back(settings.into());
            }
            return;
        }
        if let Some(size) = settings.header_table_size() {
            self.client.set_send_header_table_size(size as usize);
        }
        if let Some(size) = settings.max_frame_size() {
            self.client.set_max_send_frame_size(size as usize);
        }
        merge_settings(&mut self.client_settings, &settings);
        if self.is_down() {
            self.to_client.push_back(Settings::ack().into());
        } else {
            self.apply_client_settings(&settings);
            self.acks.sent_upstream(UpstreamAck::Client);
            self.to_upstream.push_back(settings.into());
        }
    }

    /// What the client's SETTINGS mean for the upstream connection.
    pub(super) fn apply_client_settings(&mut self, settings: &Settings) {
        if let Some(codec) = self.codec() {
            if let Some(size) = settings.header_table_size() {
                codec.set_recv_header_table_size(size as usize);
            }
            if let Some(size) = settings.max_frame_size() {
                codec.set_max_recv_frame_size(size as usize);
            }
        }
    }

    /// The next hop's SETTINGS: applied to the bridge's codecs, bounded by
    /// the bridge's own limits and passed on to the client.
    pub(super) fn upstream_settings(&mut self, mut settings: Settings) {
        if settings.is_ack() {
            if self.acks.upstream_acked() {
                self.to_client.push_back(settings.into());
            }
            return;
        }
        if let Some(codec) = self.codec() {
            if let Some(size) = settings.header_table_size() {
                codec.set_send_header_table_size(size as usize);
            }
            if let Some(size) = settings.max_frame_size() {
                codec.set_max_send_frame_size(size as usize);
            }
        }
        if let Some(size) = settings.header_table_size() {
            self.client.set_recv_header_table_size(size as usize);
        }
        if let Some(size) = settings.max_frame_size() {
            self.client.set_max_recv_frame_size(size as usize);
        }
        if let Some(streams) = settings.max_concurrent_streams() {
            self.up_max_streams = streams as usize;
            self.release_queued();
        }
        let streams = settings.max_concurrent_streams().unwrap_or(u32::MAX);
        settings.set_max_concurrent_streams(Some(streams.min(self.max_streams as u32)));
        let list = settings.max_header_list_size().unwrap_or(u32::MAX);
        settings.set_max_header_list_size(Some(list.min(self.header_list_limit)));
        let generation = self.acks.generation;
        self.send_client_settings(settings, ClientAck::Upstream(generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings_merge_field_by_field() {
        let mut merged = Settings::default();
        let mut first = Settings::default();
        first.set_initial_window_size(Some(1 << 20));
        first.set_enable_push(false);
        merge_settings(&mut merged, &first);
        let mut second = Settings::default();
        second.set_max_frame_size(Some(1 << 16));
        merge_settings(&mut merged, &second);
        assert_eq!(merged.initial_window_size(), Some(1 << 20));
        assert_eq!(merged.is_push_enabled(), Some(false));
        assert_eq!(merged.max_frame_size(), Some(1 << 16));
        assert_eq!(merged.header_table_size(), None);
    }

    #[test]
    fn acknowledgements_reach_only_the_owner_of_the_settings() {
        let mut ledger = AckLedger::default();
        // The bridge's own SETTINGS to the client, then the first next
        // hop's, which is then lost before the client acknowledged them.
        ledger.sent_client(ClientAck::Bridge);
        ledger.new_upstream();
        ledger.sent_client(ClientAck::Upstream(ledger.generation));
        ledger.new_upstream();
        ledger.sent_upstream(UpstreamAck::Bridge); // the client's, re-sent
        ledger.sent_client(ClientAck::Upstream(ledger.generation));
        assert!(!ledger.client_acked(), "the bridge's own: stops here");
        assert!(!ledger.client_acked(), "a lost next hop's: stops here");
        assert!(ledger.client_acked(), "the current next hop's: passes");
        assert!(!ledger.client_acked(), "nobody waits: stops here");
        ledger.sent_upstream(UpstreamAck::Client);
        assert!(!ledger.upstream_acked(), "the bridge's opening SETTINGS");
        assert!(!ledger.upstream_acked(), "the client's, re-sent and already acknowledged");
        assert!(ledger.upstream_acked(), "the client's, passed on");
        ledger.sent_upstream(UpstreamAck::Client);
        ledger.sent_upstream(UpstreamAck::Client);
        assert_eq!(ledger.upstream_lost(), 2, "two of the client's went unanswered");
        assert!(!ledger.upstream_acked(), "nothing is owed by a lost next hop");
    }
}
