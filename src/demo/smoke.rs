//! A short scripted gateway session through a driver socket: the check that
//! `demo --smoke` runs and that proves a chain works end to end.

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::Streaming;

use crate::proto::compute::compute_driver_client::ComputeDriverClient;
use crate::proto::compute::watch_sandboxes_event::Payload;
use crate::proto::compute::*;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// One step of the session and how it went.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Result<String, String>,
    pub elapsed: Duration,
}

/// Runs the session against the socket at `path`, stopping at the first
/// step that misbehaves. Every step is bounded in time.
pub async fn run(path: &Path) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut session = match timed("connect", &mut steps, async {
        let client = crate::grpc::client::driver_client(path).await.map_err(|e| format!("cannot connect: {e}"))?;
        Ok((client, format!("connected to {}", path.display())))
    })
    .await
    {
        Some(client) => Session { client, watch: None },
        None => return steps,
    };
    let _ = session.script(&mut steps).await;
    steps
}

struct Session {
    client: ComputeDriverClient<Channel>,
    watch: Option<Streaming<WatchSandboxesEvent>>,
}

const ID: &str = "smoke-sandbox-1";

impl Session {
    async fn script(&mut self, steps: &mut Vec<Step>) -> Option<()> {
        let mut client = self.client.clone();
        timed("GetCapabilities", steps, async {
            let caps = client.get_capabilities(GetCapabilitiesRequest {}).await.map_err(show)?.into_inner();
            Ok((caps.clone(), format!("driver {} {}", caps.driver_name, caps.driver_version)))
        })
        .await?;
        timed("GetGatewayListenerRequirements", steps, async {
            let reqs = client
                .get_gateway_listener_requirements(GetGatewayListenerRequirementsRequest {})
                .await
                .map_err(show)?
                .into_inner();
            Ok(((), format!("{} requirement(s)", reqs.requirements.len())))
        })
        .await?;
        let watch = timed("WatchSandboxes (open)", steps, async {
            let stream = client.watch_sandboxes(WatchSandboxesRequest {}).await.map_err(show)?.into_inner();
            Ok((stream, "stream open".to_string()))
        })
        .await?;
        self.watch = Some(watch);
        timed("ValidateSandboxCreate", steps, async {
            client
                .validate_sandbox_create(ValidateSandboxCreateRequest { sandbox: Some(sandbox()) })
                .await
                .map_err(show)?;
            Ok(((), "accepted".to_string()))
        })
        .await?;
        timed("CreateSandbox", steps, async {
            client.create_sandbox(CreateSandboxRequest { sandbox: Some(sandbox()) }).await.map_err(show)?;
            Ok(((), format!("created {ID}")))
        })
        .await?;
        self.expect_ready("watch: Ready=True", steps, "True").await?;
        timed("StopSandbox", steps, async {
            client
                .stop_sandbox(StopSandboxRequest { sandbox_id: ID.into(), ..Default::default() })
                .await
                .map_err(show)?;
            Ok(((), "stopped".to_string()))
        })
        .await?;
        self.expect_ready("watch: Ready=False", steps, "False").await?;
        timed("StartSandbox", steps, async {
            client
                .start_sandbox(StartSandboxRequest { sandbox_id: ID.into(), ..Default::default() })
                .await
                .map_err(show)?;
            Ok(((), "started".to_string()))
        })
        .await?;
        self.expect_ready("watch: Ready=True again", steps, "True").await?;
        timed("GetSandbox", steps, async {
            let got = client
                .get_sandbox(GetSandboxRequest { sandbox_id: ID.into(), ..Default::default() })
                .await
                .map_err(show)?
                .into_inner();
            let name = got.sandbox.map(|s| s.name).unwrap_or_default();
            Ok(((), format!("name {name}")))
        })
        .await?;
        timed("DeleteSandbox", steps, async {
            let deleted = client
                .delete_sandbox(DeleteSandboxRequest { sandbox_id: ID.into(), ..Default::default() })
                .await
                .map_err(show)?
                .into_inner()
                .deleted;
            if deleted {
                Ok(((), "deleted=true".to_string()))
            } else {
                Err("deleted=false for a sandbox that existed".to_string())
            }
        })
        .await?;
        self.expect_deleted(steps).await?;
        timed("ListSandboxes", steps, async {
            let list = client.list_sandboxes(ListSandboxesRequest {}).await.map_err(show)?.into_inner();
            if list.sandboxes.iter().any(|s| s.id == ID) {
                Err(format!("{ID} still listed after its deletion"))
            } else {
                Ok(((), format!("{} sandbox(es), {ID} gone", list.sandboxes.len())))
            }
        })
        .await?;
        Some(())
    }

    async fn expect_ready(&mut self, name: &'static str, steps: &mut Vec<Step>, want: &str) -> Option<()> {
        let watch = self.watch.as_mut()?;
        timed(name, steps, async {
            loop {
                let event = next_event(watch).await?;
                if let Some(Payload::Sandbox(snapshot)) = event.payload {
                    let Some(sandbox) = snapshot.sandbox.filter(|s| s.id == ID) else {
                        continue;
                    };
                    let ready = sandbox
                        .status
                        .iter()
                        .flat_map(|s| s.conditions.iter())
                        .find(|c| c.r#type == "Ready")
                        .map(|c| c.status.clone());
                    if ready.as_deref() == Some(want) {
                        return Ok(((), format!("{ID} Ready={want}")));
                    }
                }
            }
        })
        .await
    }

    async fn expect_deleted(&mut self, steps: &mut Vec<Step>) -> Option<()> {
        let watch = self.watch.as_mut()?;
        timed("watch: deleted event", steps, async {
            loop {
                if let Some(Payload::Deleted(deleted)) = next_event(watch).await?.payload {
                    if deleted.sandbox_id == ID {
                        return Ok(((), format!("{ID} deleted")));
                    }
                }
            }
        })
        .await
    }
}

async fn next_event(watch: &mut Streaming<WatchSandboxesEvent>) -> Result<WatchSandboxesEvent, String> {
    match watch.message().await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err("watch stream ended".into()),
        Err(status) => Err(show(status)),
    }
}

fn sandbox() -> DriverSandbox {
    DriverSandbox {
        id: ID.into(),
        name: "smoke".into(),
        namespace: "default".into(),
        spec: Some(DriverSandboxSpec {
            template: Some(DriverSandboxTemplate { image: "openshell/sandbox:latest".into(), ..Default::default() }),
            sandbox_token: "smoke-test-token-not-a-secret".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn show(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs one bounded step and records it; `None` ends the script.
async fn timed<T>(
    name: &'static str,
    steps: &mut Vec<Step>,
    step: impl std::future::Future<Output = Result<(T, String), String>>,
) -> Option<T> {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())),
    };
    let elapsed = started.elapsed();
    match outcome {
        Ok((value, detail)) => {
            steps.push(Step { name, outcome: Ok(detail), elapsed });
            Some(value)
        }
        Err(error) => {
            steps.push(Step { name, outcome: Err(error), elapsed });
            None
        }
    }
}

/// Whether every step of a finished session passed (and it got to the end).
pub fn passed(steps: &[Step]) -> bool {
    steps.iter().all(|s| s.outcome.is_ok()) && steps.last().map(|s| s.name) == Some("ListSandboxes")
}
