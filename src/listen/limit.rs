//! The connection limit of a listener (`--max-connections`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::obs::fold::Fold;
use crate::obs::metrics::{Metrics, Refusal};

/// Bounds the number of connections of one listener.
#[derive(Clone)]
pub struct ConnectionLimit(Arc<Semaphore>, usize, Arc<Fold>);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        ConnectionLimit(Arc::new(Semaphore::new(max)), max, Arc::new(Fold::new(Duration::from_secs(10))))
    }

    /// A permit, or `None` (counted, and logged folded) when the listener is full.
    pub fn admit(&self, listener: &str, metrics: &Metrics) -> Option<OwnedSemaphorePermit> {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics.refused(Refusal::ConnectionLimit);
                if let Some(repeated) = self.2.hit("connection limit") {
                    tracing::warn!(
                        listener,
                        max = self.1,
                        repeated,
                        "refused a connection: connection limit reached (--max-connections)"
                    );
                }
                None
            }
        }
    }
}
