//! A sandbox's lifecycle: its phase (provisioning, running, stopped),
//! carried in its Ready condition as on a real backend, and the driver's
//! transitions between phases, some completed after a delay.

use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tonic::Status;
use tracing::debug;

use crate::obs::escape::{for_log, LIMIT};
use crate::proto::compute::{DriverCondition, DriverSandbox};

use super::state::{instance_of, is_deleting, not_found, resolve, status_mut};
use super::watch::{deleted_event, platform_event, snapshot_event};
use super::DemoDriver;

/// Deletion completes shortly after the call returns, as on a real backend,
/// so the gateway sees `deleting=true` before the `deleted` event.
pub(super) const DELETE_DELAY: Duration = Duration::from_millis(50);

const READY_CONDITION: &str = "Ready";

/// The backend lifecycle of a sandbox, carried in its Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Provisioning,
    Running,
    Stopped,
}

impl Phase {
    fn ready_status(self) -> &'static str {
        match self {
            Phase::Running => "True",
            Phase::Provisioning | Phase::Stopped => "False",
        }
    }

    fn condition_reason(self) -> &'static str {
        match self {
            Phase::Provisioning => "Provisioning",
            Phase::Running => "Running",
            Phase::Stopped => "Stopped",
        }
    }

    fn condition_message(self) -> &'static str {
        match self {
            Phase::Provisioning => "sandbox is being provisioned",
            Phase::Running => "sandbox is running",
            Phase::Stopped => "sandbox is stopped",
        }
    }

    /// Reason and message of the platform event announcing this phase.
    fn event(self) -> (&'static str, &'static str) {
        match self {
            Phase::Provisioning => ("Scheduled", "sandbox scheduled on the demo host"),
            Phase::Running => ("Started", "sandbox started"),
            Phase::Stopped => ("Stopped", "sandbox stopped"),
        }
    }

    fn from_reason(reason: &str) -> Option<Self> {
        [Phase::Provisioning, Phase::Running, Phase::Stopped]
            .into_iter()
            .find(|phase| phase.condition_reason() == reason)
    }
}

impl DemoDriver {
    /// Moves a sandbox to `phase` and tells watchers; does nothing (and
    /// returns false) when it is already there, which makes Stop and Start
    /// idempotent without duplicate events.
    pub(super) fn enter_phase(&self, sandbox: &mut DriverSandbox, phase: Phase) -> bool {
        if current_phase(sandbox) == Some(phase) {
            return false;
        }
        set_ready_condition(sandbox, phase);
        self.emit(snapshot_event(sandbox));
        let (reason, message) = phase.event();
        self.emit(platform_event(sandbox, reason, message));
        true
    }

    /// Completes an asynchronous create, unless the sandbox was stopped,
    /// started, deleted or replaced in the meantime.
    pub(super) fn finish_provisioning(&self, id: &str, instance_id: &str) {
        let mut state = self.lock();
        let Some(sandbox) = state.sandboxes.get_mut(id) else {
            return;
        };
        if instance_of(sandbox) != instance_id
            || is_deleting(sandbox)
            || current_phase(sandbox) != Some(Phase::Provisioning)
        {
            return;
        }
        self.enter_phase(sandbox, Phase::Running);
        debug!(sandbox_id = %for_log(id, LIMIT), "demo sandbox provisioned");
    }

    /// Completes an asynchronous delete.
    pub(super) fn finish_delete(&self, id: &str, instance_id: &str) {
        let mut state = self.lock();
        let same_instance = state.sandboxes.get(id).is_some_and(|sandbox| instance_of(sandbox) == instance_id);
        if !same_instance {
            return;
        }
        state.sandboxes.remove(id);
        self.emit(deleted_event(id));
        debug!(sandbox_id = %for_log(id, LIMIT), "demo sandbox removed");
    }

    pub(super) fn spawn_after(&self, delay: Duration, work: impl FnOnce(&DemoDriver) + Send + 'static) {
        let driver = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            work(&driver);
        });
    }

    /// Shared body of Stop and Start.
    pub(super) fn change_phase(&self, id: &str, name: &str, phase: Phase) -> Result<(), Status> {
        let mut state = self.lock();
        let key = resolve(&state, id, name)?.ok_or_else(|| not_found(id, name))?;
        let Some(sandbox) = state.sandboxes.get_mut(&key) else {
            return Err(not_found(id, name));
        };
        if is_deleting(sandbox) {
            // Stopping something on its way out is already achieved;
            // starting it is not possible.
            return match phase {
                Phase::Stopped => Ok(()),
                _ => Err(Status::failed_precondition(format!("sandbox {key} is being deleted"))),
            };
        }
        self.enter_phase(sandbox, phase);
        Ok(())
    }
}

pub(super) fn ready_condition(sandbox: &DriverSandbox) -> Option<&DriverCondition> {
    sandbox.status.as_ref()?.conditions.iter().find(|condition| condition.r#type == READY_CONDITION)
}

pub(super) fn current_phase(sandbox: &DriverSandbox) -> Option<Phase> {
    ready_condition(sandbox).and_then(|condition| Phase::from_reason(&condition.reason))
}

/// Writes the Ready condition for `phase`. As in Kubernetes, the transition
/// time moves only when the status itself flips, not on a new reason.
pub(super) fn set_ready_condition(sandbox: &mut DriverSandbox, phase: Phase) {
    let status = status_mut(sandbox);
    let position = status.conditions.iter().position(|condition| condition.r#type == READY_CONDITION);
    let index = position.unwrap_or_else(|| {
        status.conditions.push(DriverCondition { r#type: READY_CONDITION.to_owned(), ..Default::default() });
        status.conditions.len() - 1
    });
    let condition = &mut status.conditions[index];
    if position.is_none() || condition.status != phase.ready_status() {
        condition.last_transition_time = rfc3339_now();
    }
    condition.status = phase.ready_status().to_owned();
    condition.reason = phase.condition_reason().to_owned();
    condition.message = phase.condition_message().to_owned();
}

fn rfc3339_now() -> String {
    // Formatting fails only for years outside 0..=9999; an empty time is a
    // better answer than failing the call.
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}
