//! The watch fan-out: live events broadcast to every watcher, the events
//! themselves (snapshot, deleted, platform), and the stream a watcher
//! reads, which ends with an error when it fell too far behind.

use std::collections::HashMap;
use std::pin::Pin;

use futures_util::stream::{self, Stream};
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tonic::Status;

use crate::proto::compute::watch_sandboxes_event::Payload;
use crate::proto::compute::{
    DriverPlatformEvent, DriverSandbox, WatchSandboxesDeletedEvent, WatchSandboxesEvent, WatchSandboxesPlatformEvent,
    WatchSandboxesSandboxEvent,
};

use super::state::instance_of;
use super::DemoDriver;

/// How many live events a watcher may fall behind before it is cut off and
/// has to re-open (and so re-snapshot) its stream.
pub(super) const EVENT_BUFFER: usize = 1024;

const EVENT_SOURCE: &str = "demo-driver";
const EVENT_TYPE_NORMAL: &str = "Normal";

pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchSandboxesEvent, Status>> + Send>>;

impl DemoDriver {
    /// Broadcasts a live event. Must be called with the state locked.
    pub(super) fn emit(&self, event: WatchSandboxesEvent) {
        // An error only means nobody is watching right now, which is fine:
        // a watcher that arrives later starts from a snapshot.
        let _ = self.inner.events.send(event);
    }
}

/// Turns a broadcast receiver into the live half of a watch. A watcher
/// that fell behind has missed events it can never get back, so its stream
/// ends with an error; the gateway re-opens it and gets a fresh snapshot.
pub(super) fn live_events(
    rx: broadcast::Receiver<WatchSandboxesEvent>,
) -> impl Stream<Item = Result<WatchSandboxesEvent, Status>> + Send {
    stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(event) => Some((Ok(event), Some(rx))),
            Err(RecvError::Lagged(missed)) => Some((
                Err(Status::unavailable(format!(
                    "demo driver watch lagged and missed {missed} events; re-open the watch"
                ))),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    })
}

pub(super) fn snapshot_event(sandbox: &DriverSandbox) -> WatchSandboxesEvent {
    WatchSandboxesEvent {
        payload: Some(Payload::Sandbox(WatchSandboxesSandboxEvent { sandbox: Some(sandbox.clone()) })),
    }
}

pub(super) fn deleted_event(id: &str) -> WatchSandboxesEvent {
    WatchSandboxesEvent { payload: Some(Payload::Deleted(WatchSandboxesDeletedEvent { sandbox_id: id.to_owned() })) }
}

pub(super) fn platform_event(sandbox: &DriverSandbox, reason: &str, message: &str) -> WatchSandboxesEvent {
    let metadata = HashMap::from([("instance_id".to_owned(), instance_of(sandbox).to_owned())]);
    WatchSandboxesEvent {
        payload: Some(Payload::PlatformEvent(WatchSandboxesPlatformEvent {
            sandbox_id: sandbox.id.clone(),
            event: Some(DriverPlatformEvent {
                timestamp_ms: unix_millis_now(),
                source: EVENT_SOURCE.to_owned(),
                r#type: EVENT_TYPE_NORMAL.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                metadata,
            }),
        })),
    }
}

fn unix_millis_now() -> i64 {
    let millis = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis).unwrap_or(i64::MAX)
}
