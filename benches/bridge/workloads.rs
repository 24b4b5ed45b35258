//! The measurements. Each takes a path's `Dial` (and whatever else it
//! needs), bounds itself in time and count, and returns one round's values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openshell_driver_bridge::demo::driver::DemoDriver;
use openshell_driver_bridge::proto::compute::compute_driver_server::ComputeDriver;
use openshell_driver_bridge::proto::compute::{
    CreateSandboxRequest, DriverResourceRequirements, DriverSandbox, DriverSandboxSpec, DriverSandboxTemplate,
    GetSandboxRequest, ListSandboxesRequest, StartSandboxRequest, StopSandboxRequest, WatchSandboxesEvent,
    WatchSandboxesRequest,
};
use prost::Message;
use tokio::sync::Notify;

use crate::setup::{connect, Client, Dial};

/// The sandbox every unary call reads.
pub const UNARY_ID: &str = "bench-0";
/// The sandbox the watch workload stops and starts to make events.
pub const TOGGLE_ID: &str = "bench-w";

const CALL_LIMIT: Duration = Duration::from_secs(10);

/// A sandbox as a gateway would create it, about 400 bytes encoded.
pub fn sandbox(id: &str, name: &str) -> DriverSandbox {
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    DriverSandbox {
        id: id.to_owned(),
        name: name.to_owned(),
        namespace: "bench".to_owned(),
        workspace: "bench-workspace".to_owned(),
        spec: Some(DriverSandboxSpec {
            log_level: "info".to_owned(),
            environment: env(&[
                ("OPENSHELL_SANDBOX_ID", id),
                ("OPENSHELL_ENDPOINT", "https://gateway.example.internal:8443"),
                ("LANG", "C.UTF-8"),
                ("HOME", "/home/sandbox"),
            ]),
            template: Some(DriverSandboxTemplate {
                image: "registry.example.internal/openshell/sandbox:1.4.2".to_owned(),
                agent_socket_path: "/run/openshell/agent.sock".to_owned(),
                labels: env(&[
                    ("app.kubernetes.io/name", "openshell-sandbox"),
                    ("app.kubernetes.io/managed-by", "openshell-gateway"),
                    ("openshell.io/sandbox", id),
                ]),
                environment: env(&[("PATH", "/usr/local/bin:/usr/bin:/bin")]),
                resources: Some(DriverResourceRequirements {
                    cpu_request: "500m".to_owned(),
                    cpu_limit: "2".to_owned(),
                    memory_request: "512Mi".to_owned(),
                    memory_limit: "2Gi".to_owned(),
                }),
                ..Default::default()
            }),
            command: vec!["/usr/local/bin/openshell-agent".to_owned(), "--serve".to_owned()],
            ..Default::default()
        }),
        status: None,
    }
}

pub async fn create(driver: &DemoDriver, id: &str, name: &str) -> Result<(), String> {
    driver
        .create_sandbox(tonic::Request::new(CreateSandboxRequest { sandbox: Some(sandbox(id, name)) }))
        .await
        .map(|_| ())
        .map_err(|s| format!("create {id}: {}", s.message()))
}

/// Creates sandboxes until the driver holds `total`; returns the encoded
/// size of the full ListSandboxes answer.
pub async fn populate(driver: &DemoDriver, total: usize) -> Result<usize, String> {
    let mut n = 0;
    while driver.sandbox_count() < total {
        create(driver, &format!("sb-{n:06}"), &format!("sandbox-{n:06}")).await?;
        n += 1;
    }
    // Let provisioning settle (Ready=True everywhere).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let list = driver.list_sandboxes(tonic::Request::new(ListSandboxesRequest {})).await.map_err(|s| s.to_string())?;
    Ok(list.into_inner().encoded_len())
}

async fn get(client: &mut Client) -> Result<(), String> {
    let request = GetSandboxRequest { sandbox_id: UNARY_ID.to_owned(), sandbox_name: String::new() };
    match tokio::time::timeout(CALL_LIMIT, client.get_sandbox(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(format!("GetSandbox: {:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("GetSandbox: no answer within {CALL_LIMIT:?}")),
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Unary GetSandbox one call at a time: [p50 µs, p99 µs, calls, sleeps
/// (voluntary context switches) per call and CPU µs per call of the proxy
/// processes `procs` (NaN without any)].
pub async fn unary_latency(
    dial: Dial,
    window: Duration,
    max_calls: usize,
    procs: Vec<u32>,
) -> Result<Vec<f64>, String> {
    let mut client = connect(&dial).await?;
    for _ in 0..20 {
        get(&mut client).await?;
    }
    let mut samples = Vec::with_capacity(max_calls.min(1 << 20));
    let switches_before = crate::procfs::context_switches(&procs);
    let cpu = || procs.iter().filter_map(|pid| crate::procfs::cpu_seconds(Some(*pid))).sum::<f64>();
    let cpu_before = cpu();
    let deadline = Instant::now() + window;
    while Instant::now() < deadline && samples.len() < max_calls {
        let t = Instant::now();
        get(&mut client).await?;
        samples.push(t.elapsed());
    }
    let switches = crate::procfs::context_switches(&procs) - switches_before;
    let cpu_us = (cpu() - cpu_before) * 1e6 / samples.len() as f64;
    let (per_call, cpu_per_call) =
        if procs.is_empty() { (f64::NAN, f64::NAN) } else { (switches as f64 / samples.len() as f64, cpu_us) };
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(vec![
        us(percentile(&samples, 50.0)),
        us(percentile(&samples, 99.0)),
        samples.len() as f64,
        per_call,
        cpu_per_call,
    ])
}

/// Unary GetSandbox at `concurrency` over one connection (one channel,
/// cloned into every task): [calls/s].
pub async fn unary_throughput(dial: Dial, concurrency: usize, window: Duration) -> Result<Vec<f64>, String> {
    let client = connect(&dial).await?;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let done = done.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                get(&mut client).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    // Warm-up: let every task make some calls before counting.
    tokio::time::sleep(window / 5).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let count = done.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(vec![count as f64 / elapsed.as_secs_f64()])
}

/// A fixed batch of `batch` GetSandbox calls at `concurrency` over one
/// connection (cut short at `limit`, and then scaled by the calls made).
/// CPU time (user + system, from /proc) of each group of proxy processes
/// and of this process (client and driver) over the batch, scaled to
/// 100,000 calls: [calls, all groups, this process, group 0, group 1, ...].
pub async fn cpu_batch(
    dial: Dial,
    concurrency: usize,
    batch: u64,
    limit: Duration,
    groups: Vec<Vec<u32>>,
) -> Result<Vec<f64>, String> {
    let client = connect(&dial).await?;
    let remaining = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let run = |n: u64| {
        remaining.store(n, Ordering::SeqCst);
        (0..concurrency)
            .map(|_| {
                let mut client = client.clone();
                let (remaining, done) = (remaining.clone(), done.clone());
                tokio::spawn(async move {
                    while remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                        get(&mut client).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, String>(())
                })
            })
            .collect::<Vec<_>>()
    };
    for task in run((concurrency * 10) as u64) {
        task.await.map_err(|e| e.to_string())??;
    }
    let cpu = |pids: &[u32]| pids.iter().filter_map(|pid| crate::procfs::cpu_seconds(Some(*pid))).sum::<f64>();
    let before: Vec<f64> = groups.iter().map(|g| cpu(g)).collect();
    let self_before = crate::procfs::cpu_seconds(None).unwrap_or(0.0);
    let done_before = done.load(Ordering::SeqCst);
    let tasks = run(batch);
    let stopper = {
        let remaining = remaining.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            remaining.store(0, Ordering::SeqCst);
        })
    };
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    stopper.abort();
    let calls = done.load(Ordering::SeqCst) - done_before;
    let after: Vec<f64> = groups.iter().map(|g| cpu(g)).collect();
    let self_after = crate::procfs::cpu_seconds(None).unwrap_or(0.0);
    let scale = 100_000.0 / calls.max(1) as f64;
    let per_group: Vec<f64> = before.iter().zip(&after).map(|(b, a)| (a - b) * scale).collect();
    let mut out = vec![calls as f64, per_group.iter().sum::<f64>(), (self_after - self_before) * scale];
    out.extend(per_group);
    Ok(out)
}

/// ListSandboxes with the driver's whole population: [median ms over
/// `calls` calls]. Every answer must carry all `expect` sandboxes.
pub async fn list_large(dial: Dial, calls: usize, expect: usize, limit: Duration) -> Result<Vec<f64>, String> {
    let mut client = connect(&dial).await?;
    // Warm-up: connection, TLS and the first large answer.
    get(&mut client).await?;
    let list = || {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(limit, client.list_sandboxes(ListSandboxesRequest {}))
                .await
                .map_err(|_| format!("ListSandboxes: no full answer within {limit:?}"))?
                .map_err(|s| format!("ListSandboxes: {:?}: {}", s.code(), s.message()))?;
            let got = answer.into_inner().sandboxes.len();
            if got != expect {
                return Err(format!("ListSandboxes returned {got} sandboxes, expected {expect}"));
            }
            Ok::<_, String>(started.elapsed())
        }
    };
    list().await?;
    let mut times = Vec::new();
    for _ in 0..calls {
        times.push(list().await?);
    }
    times.sort();
    Ok(vec![percentile(&times, 50.0).as_secs_f64() * 1e3])
}

/// Unary GetSandbox one at a time over the emulated WAN: [p50 ms, p99 ms].
pub async fn wan_unary(dial: Dial, calls: usize) -> Result<Vec<f64>, String> {
    let mut client = connect(&dial).await?;
    for _ in 0..3 {
        get(&mut client).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        get(&mut client).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(vec![ms(percentile(&samples, 50.0)), ms(percentile(&samples, 99.0))])
}

/// Live events a watch generator keeps in flight at most: well below the
/// demo driver's per-watcher buffer (1024), so no watcher is ever cut off
/// for lagging, and far above what any path needs to stay busy.
const EVENTS_IN_FLIGHT: u64 = 512;

/// WatchSandboxes: `watchers` watches (each on its own connection) while
/// the driver's sandbox TOGGLE_ID is stopped and started (on the driver's
/// runtime, `driver_rt`) as fast as the
/// slowest watcher keeps up (closed loop, at most EVENTS_IN_FLIGHT events
/// ahead of it): [events/s delivered, summed over watchers; events/s
/// generated].
pub async fn watch_rate(
    dial: Dial,
    driver: DemoDriver,
    driver_rt: tokio::runtime::Handle,
    watchers: usize,
    warmup: Duration,
    window: Duration,
) -> Result<Vec<f64>, String> {
    let counters: Arc<Vec<AtomicU64>> = Arc::new((0..watchers).map(|_| AtomicU64::new(0)).collect());
    let notify = Arc::new(Notify::new());
    let ready = Arc::new(AtomicUsize::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let backlog = driver.sandbox_count();
    let mut tasks = Vec::new();
    for index in 0..watchers {
        let mut client = connect(&dial).await?;
        let (counters, notify, ready, failure) = (counters.clone(), notify.clone(), ready.clone(), failure.clone());
        tasks.push(tokio::spawn(async move {
            let outcome: Result<(), String> = async {
                let mut stream = open_watch(&mut client, backlog, &ready).await?;
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {
                            counters[index].fetch_add(1, Ordering::Relaxed);
                            notify.notify_one();
                        }
                        Ok(None) => return Err("watch stream ended".to_owned()),
                        Err(s) => return Err(format!("watch stream failed: {:?}: {}", s.code(), s.message())),
                    }
                }
            }
            .await;
            if let Err(e) = outcome {
                failure.lock().unwrap().get_or_insert(e);
                notify.notify_one();
            }
        }));
    }
    let abort_all = |tasks: &[tokio::task::JoinHandle<()>]| tasks.iter().for_each(|t| t.abort());
    let opened = Instant::now();
    while ready.load(Ordering::SeqCst) < watchers {
        if let Some(e) = failure.lock().unwrap().clone() {
            abort_all(&tasks);
            return Err(e);
        }
        if opened.elapsed() > Duration::from_secs(20) {
            abort_all(&tasks);
            return Err(format!("only {} of {watchers} watches opened", ready.load(Ordering::SeqCst)));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let generator = {
        let (counters, notify, stop, produced, failure) =
            (counters.clone(), notify.clone(), stop.clone(), produced.clone(), failure.clone());
        driver_rt.spawn(async move {
            let request =
                || tonic::Request::new(StopSandboxRequest { sandbox_id: TOGGLE_ID.to_owned(), ..Default::default() });
            let start =
                || tonic::Request::new(StartSandboxRequest { sandbox_id: TOGGLE_ID.to_owned(), ..Default::default() });
            while !stop.load(Ordering::Relaxed) && failure.lock().unwrap().is_none() {
                let slowest = counters.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0);
                if produced.load(Ordering::Relaxed).saturating_sub(slowest) + 4 > EVENTS_IN_FLIGHT {
                    let _ = tokio::time::timeout(Duration::from_millis(5), notify.notified()).await;
                    continue;
                }
                // Stop then start: two events each (snapshot and platform event).
                if let Err(s) = driver.stop_sandbox(request()).await {
                    return Err(format!("generator: stop: {}", s.message()));
                }
                if let Err(s) = driver.start_sandbox(start()).await {
                    return Err(format!("generator: start: {}", s.message()));
                }
                produced.fetch_add(4, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        })
    };
    let total = || counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    tokio::time::sleep(warmup).await;
    let (delivered0, produced0, t0) = (total(), produced.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(window).await;
    let (delivered1, produced1, elapsed) = (total(), produced.load(Ordering::Relaxed), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    let generated = generator.await.map_err(|e| e.to_string());
    abort_all(&tasks);
    generated??;
    if let Some(e) = failure.lock().unwrap().clone() {
        return Err(e);
    }
    let secs = elapsed.as_secs_f64();
    Ok(vec![(delivered1 - delivered0) as f64 / secs, (produced1 - produced0) as f64 / secs])
}

/// Opens a watch, reads its `backlog` snapshot events, then counts itself
/// in `ready`.
async fn open_watch(
    client: &mut Client,
    backlog: usize,
    ready: &AtomicUsize,
) -> Result<tonic::Streaming<WatchSandboxesEvent>, String> {
    let mut stream = client
        .watch_sandboxes(WatchSandboxesRequest {})
        .await
        .map_err(|s| format!("WatchSandboxes: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    for _ in 0..backlog {
        stream.message().await.map_err(|s| format!("watch snapshot: {}", s.message()))?;
    }
    ready.fetch_add(1, Ordering::SeqCst);
    Ok(stream)
}

/// Opens `count` watches over one connection and holds them; returns the
/// tasks (abort them to close) once every watch has its snapshot.
pub async fn open_watches(
    dial: &Dial,
    count: usize,
    backlog: usize,
) -> Result<(Client, Vec<tokio::task::JoinHandle<()>>), String> {
    let client = connect(dial).await?;
    let ready = Arc::new(AtomicUsize::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let mut client = client.clone();
            let (ready, failure) = (ready.clone(), failure.clone());
            tokio::spawn(async move {
                let outcome = async {
                    let mut stream = open_watch(&mut client, backlog, &ready).await?;
                    // Hold the stream open until aborted.
                    while let Ok(Some(_)) = stream.message().await {}
                    Err::<(), String>("watch stream ended while held open".into())
                }
                .await;
                if let Err(e) = outcome {
                    failure.lock().unwrap().get_or_insert(e);
                }
            })
        })
        .collect();
    let opened = Instant::now();
    loop {
        let n = ready.load(Ordering::SeqCst);
        if n == count {
            return Ok((client, tasks));
        }
        let failed = failure.lock().unwrap().clone();
        if failed.is_some() || opened.elapsed() > Duration::from_secs(30) {
            tasks.iter().for_each(|t| t.abort());
            return Err(format!(
                "only {n} of {count} watches opened: {}",
                failed.unwrap_or_else(|| "timed out".into())
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
