//! What the demo driver keeps: its sandboxes and workspaces, and the
//! checks and lookups on them (validation, admission, resolving a request
//! to a sandbox).

use std::collections::{BTreeMap, BTreeSet};

use tonic::Status;

use crate::proto::compute::{DriverSandbox, DriverSandboxStatus};

#[derive(Default)]
pub(super) struct State {
    /// Keyed by sandbox id; the ordered map makes `ListSandboxes` sorted.
    pub(super) sandboxes: BTreeMap<String, DriverSandbox>,
    pub(super) workspaces: BTreeSet<String>,
    pub(super) instances_created: u64,
}

pub(super) fn require_sandbox(sandbox: Option<DriverSandbox>) -> Result<DriverSandbox, Status> {
    sandbox.ok_or_else(|| Status::invalid_argument("sandbox is required"))
}

/// Checks a sandbox for Validate and Create: required fields, then clashes
/// with sandboxes already known.
pub(super) fn validate_create(state: &State, sandbox: &DriverSandbox) -> Result<(), Status> {
    if sandbox.id.is_empty() {
        return Err(Status::invalid_argument("sandbox.id is required"));
    }
    let image = sandbox
        .spec
        .as_ref()
        .and_then(|spec| spec.template.as_ref())
        .map(|template| template.image.as_str())
        .unwrap_or_default();
    if image.is_empty() {
        return Err(Status::invalid_argument("sandbox.spec.template.image is required"));
    }
    // The same id is a clash even while the old one is being deleted: its
    // pending removal would otherwise race the new sandbox.
    if state.sandboxes.contains_key(&sandbox.id) {
        return Err(Status::already_exists(format!("sandbox {} already exists", sandbox.id)));
    }
    let name_taken = !sandbox.name.is_empty()
        && state.sandboxes.values().any(|other| other.name == sandbox.name && !is_deleting(other));
    if name_taken {
        return Err(Status::already_exists(format!("a sandbox named {} already exists", sandbox.name)));
    }
    Ok(())
}

/// Prepares an accepted sandbox for storage. The token is dropped: a demo
/// host has nothing to hand it to, and keeping it would echo a credential
/// back in every Get, List and watch snapshot.
pub(super) fn admit(mut sandbox: DriverSandbox, instance_id: &str) -> DriverSandbox {
    if let Some(spec) = sandbox.spec.as_mut() {
        spec.sandbox_token.clear();
    }
    sandbox.status = Some(DriverSandboxStatus {
        sandbox_name: sandbox.name.clone(),
        instance_id: instance_id.to_owned(),
        ..Default::default()
    });
    sandbox
}

/// Finds the key of the sandbox a request addresses: by id when given,
/// otherwise by name (preferring one that is not being deleted).
pub(super) fn resolve(state: &State, id: &str, name: &str) -> Result<Option<String>, Status> {
    if !id.is_empty() {
        return Ok(state.sandboxes.contains_key(id).then(|| id.to_owned()));
    }
    if name.is_empty() {
        return Err(Status::invalid_argument("sandbox_id or sandbox_name is required"));
    }
    Ok(state
        .sandboxes
        .values()
        .filter(|sandbox| sandbox.name == name)
        .min_by_key(|sandbox| is_deleting(sandbox))
        .map(|sandbox| sandbox.id.clone()))
}

pub(super) fn not_found(id: &str, name: &str) -> Status {
    if id.is_empty() {
        Status::not_found(format!("sandbox named {name} not found"))
    } else {
        Status::not_found(format!("sandbox {id} not found"))
    }
}

/// The id to log for a create-style request; never the whole sandbox,
/// which carries the token.
pub(super) fn sandbox_id_of(sandbox: Option<&DriverSandbox>) -> &str {
    sandbox.map(|sandbox| sandbox.id.as_str()).unwrap_or("")
}

pub(super) fn status_mut(sandbox: &mut DriverSandbox) -> &mut DriverSandboxStatus {
    sandbox.status.get_or_insert_with(Default::default)
}

pub(super) fn is_deleting(sandbox: &DriverSandbox) -> bool {
    sandbox.status.as_ref().is_some_and(|status| status.deleting)
}

pub(super) fn instance_of(sandbox: &DriverSandbox) -> &str {
    sandbox.status.as_ref().map(|status| status.instance_id.as_str()).unwrap_or("")
}
