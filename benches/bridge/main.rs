//! The side-by-side benchmark: `cargo bench --bench bridge` (full, under
//! 10 minutes) or `cargo bench --bench bridge -- --quick` (under 2 minutes).
//!
//! One run measures these paths to the same in-memory reference driver:
//!
//! 1. `direct-uds`: tonic client -> driver socket (the floor).
//! 2. `direct-mtls`: tonic client -> the driver served by tonic over mTLS on
//!    loopback (the limit for a remote driver: one TLS hop).
//! 3. `bridge`: tonic client -> shim socket -> relay (mTLS on loopback) ->
//!    driver socket; shim and relay are child processes of the real binary.
//! 4. `nginx`: the same two-hop shape built from nginx (child processes).
//! 5. `haproxy`: the same two-hop shape built from HAProxy (child processes).
//! 6. `copy-chain`: the same shape again with two byte-copying forwarders
//!    (child processes) in place of shim and relay and TLS end to end: what
//!    the extra processes alone cost (see floor.rs).
//!
//! The client, the driver and the emulated wide-area links live in this
//! process; the proxies in their own. Results: a table on stdout and
//! `target/bench/results.json`. See BENCHMARKS.md.

mod callback;
mod floor;
mod haproxy;
mod nginx;
mod peer;
mod procfs;
mod report;
mod setup;
mod verdict;
mod wan;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use openshell_driver_bridge::demo::driver::{DemoDriver, DemoOptions};
use openshell_driver_bridge::shutdown::Shutdown;
use openshell_driver_bridge::tls::config::{client_config, server_config};

use report::{Better, Cell, Goal, Row, BRIDGE, BRIDGE_B, COPY, HAPROXY, NGINX, PATHS};
use setup::Dial;
use wan::WanLink;

/// How long and how often; the full and quick modes differ only here.
struct Settings {
    quick: bool,
    rounds: usize,
    unary_window: Duration,
    unary_max_calls: usize,
    concurrency: usize,
    throughput_window: Duration,
    cpu_rounds: usize,
    cpu_batch: u64,
    cpu_time_limit: Duration,
    watch_warmup: Duration,
    watch_window: Duration,
    list_size: usize,
    list_calls: usize,
    wan_list_calls: usize,
    wan_unary_calls: usize,
    memory_watches: usize,
    memory_rounds: usize,
    wan: WanLink,
    /// `--hold SECONDS[:CONCURRENCY]`: no table; load one path for profilers.
    hold: Option<(Duration, usize)>,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        let wan = WanLink { delay: Duration::from_millis(25), bits_per_second: 100e6 };
        if quick {
            Settings {
                quick,
                rounds: 3,
                unary_window: Duration::from_millis(500),
                unary_max_calls: 100_000,
                concurrency: 64,
                throughput_window: Duration::from_millis(500),
                cpu_rounds: 3,
                cpu_batch: 10_000,
                cpu_time_limit: Duration::from_secs(10),
                watch_warmup: Duration::from_millis(100),
                watch_window: Duration::from_millis(500),
                list_size: 10_000,
                list_calls: 2,
                wan_list_calls: 1,
                wan_unary_calls: 10,
                memory_watches: 1000,
                memory_rounds: 3,
                wan,
                hold: None,
            }
        } else {
            Settings {
                quick,
                rounds: 5,
                unary_window: Duration::from_secs(2),
                unary_max_calls: 1_000_000,
                concurrency: 64,
                throughput_window: Duration::from_secs(2),
                cpu_rounds: 3,
                cpu_batch: 100_000,
                cpu_time_limit: Duration::from_secs(40),
                watch_warmup: Duration::from_millis(300),
                watch_window: Duration::from_secs(2),
                list_size: 10_000,
                list_calls: 5,
                wan_list_calls: 3,
                wan_unary_calls: 40,
                memory_watches: 1000,
                memory_rounds: 3,
                wan,
                hold: None,
            }
        }
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("mode", if self.quick { "quick".into() } else { "full".into() }),
            ("rounds", self.rounds.to_string()),
            ("unary window per round", format!("{:?}", self.unary_window)),
            (
                "throughput window per round",
                format!("{:?} at concurrency {}", self.throughput_window, self.concurrency),
            ),
            (
                "cpu batch",
                format!(
                    "{} calls x {} rounds at concurrency {}{}",
                    self.cpu_batch,
                    self.cpu_rounds,
                    self.concurrency,
                    if self.cpu_batch == 100_000 {
                        String::new()
                    } else {
                        format!(", scaled x{} to 100,000", 100_000 / self.cpu_batch)
                    }
                ),
            ),
            ("watch window per round", format!("{:?} after {:?} warm-up", self.watch_window, self.watch_warmup)),
            ("list", format!("{} sandboxes, {} calls per round", self.list_size, self.list_calls)),
            ("wan list", format!("{} calls per round", self.wan_list_calls)),
            ("wan unary", format!("{} calls per round", self.wan_unary_calls)),
            ("memory", format!("{} watches over one connection, {} rounds", self.memory_watches, self.memory_rounds)),
            ("emulated wan link", self.wan.describe()),
        ]
    }
}

/// Whether a path can run, and if not, why.
#[derive(Clone)]
enum Avail {
    Ready(Dial),
    Na(String),
    Skipped(String),
}

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn log(message: impl AsRef<str>) {
    eprintln!("[{:>6.1}s] {}", started().elapsed().as_secs_f64(), message.as_ref());
}

fn usage() -> &'static str {
    "usage: cargo bench --bench bridge [-- [--quick] [--only GROUPS]]\n\
     \n  --quick        short rounds (under 2 minutes); also BENCH_QUICK=1\n\
     \n  --only GROUPS  comma-separated subset of: memory, unary, throughput, cpu, watch, list, wan\
     \n  --paths PATHS  comma-separated subset of: direct-uds, direct-mtls, bridge, nginx, haproxy, copy-chain, bridge-B\
     \n  --callback     only the way back: sandbox connections through relay and shim vs direct TCP, as ratios\
     \n  --hold S[:C]   no table: load the first selected path with GetSandbox for S seconds at\
     \n                 concurrency C (default 1), printing the proxies' pids, for perf or strace\
     \n\nenvironment:\
     \n  BENCH_BRIDGE_B_ENV=K=V,...  also measure a second bridge (column bridge-B) with this environment\
     \n  BENCH_BRIDGE_B_BIN=PATH     ... or built from another binary (e.g. a copy of the previous build)\
     \n  OPENSHELL_BRIDGE_WORKER_THREADS=N  inherited by the bridge's processes (--worker-threads)\n"
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(floor::FORWARD_ENV) {
        return floor::forwarder_main(&spec);
    }
    started();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let quick =
        args.iter().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|groups| groups.split(',').map(|g| g.trim().to_owned()).collect());
    // Explicit, so TOKIO_WORKER_THREADS (inherited by child
    // processes) changes only the children.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let paths: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--paths")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(|p| p.trim().to_owned()).collect());
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The driver gets a runtime of its own, as it would have in its own
    // process: client and driver never share a worker thread, so every
    // call crosses threads (and pays the wake-ups) as it does on a real
    // remote driver.
    let driver_runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("driver")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the driver's runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.iter().any(|a| a == "--callback") {
        let result = runtime.block_on(callback::run(quick));
        runtime.shutdown_timeout(Duration::from_secs(1));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut settings = Settings::new(quick);
    if let Some(spec) = args.iter().position(|a| a == "--hold").and_then(|i| args.get(i + 1)) {
        let (seconds, concurrency) = spec.split_once(':').unwrap_or((spec, "1"));
        match (seconds.parse::<u64>(), concurrency.parse::<usize>()) {
            (Ok(s), Ok(c)) if s > 0 && c > 0 => settings.hold = Some((Duration::from_secs(s), c)),
            _ => {
                eprintln!("--hold {spec}: expected SECONDS or SECONDS:CONCURRENCY, both positive integers");
                return ExitCode::FAILURE;
            }
        }
    }
    let result = runtime.block_on(run(settings, only, paths, driver_runtime.handle().clone()));
    runtime.shutdown_timeout(Duration::from_secs(1));
    driver_runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `job` for every ready path, `rounds` times, the paths' order
/// rotating each round so slow drifts of the machine spread evenly. `job`
/// returns one round's values (`metrics` of them; NaN where a metric does
/// not apply). One cell per metric and path.
async fn run_rounds(
    name: &str,
    rounds: usize,
    avail: &[Avail],
    metrics: usize,
    job: impl Fn(usize, Dial) -> BoxFuture<'static, Result<Vec<f64>, String>>,
) -> Vec<Vec<Cell>> {
    let paths = avail.len();
    let mut samples = vec![vec![Vec::<f64>::new(); paths]; metrics];
    let mut failed: Vec<Option<String>> = vec![None; paths];
    for round in 0..rounds {
        for k in 0..paths {
            let path = (k + round) % paths;
            let Avail::Ready(dial) = &avail[path] else {
                continue;
            };
            if failed[path].is_some() {
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(120), job(path, dial.clone())).await {
                Ok(Ok(values)) => {
                    let shown: Vec<String> = values.iter().filter(|v| v.is_finite()).map(|v| report::num(*v)).collect();
                    log(format!("{name}: round {}/{rounds} {:<11} {}", round + 1, PATHS[path], shown.join("  ")));
                    for (metric, sample) in samples.iter_mut().enumerate() {
                        sample[path].push(values.get(metric).copied().unwrap_or(f64::NAN));
                    }
                }
                Ok(Err(e)) => {
                    log(format!("{name}: round {}/{rounds} {}: FAILED: {e}", round + 1, PATHS[path]));
                    failed[path] = Some(format!("{name}, round {}: {e}", round + 1));
                }
                Err(_) => {
                    log(format!("{name}: round {}/{rounds} {}: timed out", round + 1, PATHS[path]));
                    failed[path] = Some(format!("{name}, round {}: no result within 120 s", round + 1));
                }
            }
        }
    }
    samples
        .into_iter()
        .map(|per_path| {
            per_path
                .into_iter()
                .enumerate()
                .map(|(path, values)| match (&avail[path], &failed[path]) {
                    (Avail::Na(r), _) => Cell::Na(r.clone()),
                    (Avail::Skipped(r), _) => Cell::Skipped(r.clone()),
                    (_, Some(e)) => Cell::Failed(e.clone()),
                    _ => {
                        let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
                        if values.is_empty() {
                            Cell::Na("not measured on this path".into())
                        } else {
                            Cell::Values(values)
                        }
                    }
                })
                .collect()
        })
        .collect()
}

fn na_reason(cells: Vec<Cell>, reason: &str) -> Vec<Cell> {
    cells.into_iter().map(|c| if let Cell::Na(_) = c { Cell::Na(reason.to_owned()) } else { c }).collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn machine() -> Vec<(&'static str, String)> {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown".into());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        ("nproc", std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_default()),
        ("cpu", cpu),
        ("memory", format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0)),
        ("kernel", read("/proc/sys/kernel/osrelease").trim().to_owned()),
        ("os", os),
        ("rustc", rustc),
    ]
}

fn loadavg() -> String {
    read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn run(
    s: Settings,
    only: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    driver_rt: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let wants = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));
    let date =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let machine = machine();
    let load_start = loadavg();
    log(format!(
        "openshell-driver-bridge benchmark, {} mode; load average {load_start}",
        if s.quick { "quick" } else { "full" }
    ));

    // The reference driver, on its socket.
    let dir = tempfile::Builder::new().prefix("bridge-bench-").tempdir()?;
    let pki = setup::Pki::create(&dir.path().join("pki"))?;
    let driver =
        DemoDriver::with_options(DemoOptions { provision_delay: Duration::from_millis(1), ..Default::default() });
    let shutdown = Shutdown::new();
    let driver_socket = dir.path().join("driver/driver.sock");
    {
        let _driver_context = driver_rt.enter();
        openshell_driver_bridge::demo::serve(&driver_socket, driver.clone(), shutdown.clone())?;
    }
    let seeded = driver.clone();
    driver_rt
        .spawn(async move {
            workloads::create(&seeded, workloads::UNARY_ID, "bench-unary").await?;
            workloads::create(&seeded, workloads::TOGGLE_ID, "bench-watch").await
        })
        .await?
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // direct-mtls: the same driver behind tonic's own server over mTLS.
    let mtls_addr = driver_rt.spawn(setup::serve_mtls(driver.clone(), server_config(&pki.server_files())?)).await??;
    let mtls_wan = wan::start(mtls_addr, s.wan).await?;
    let client_tls = Arc::new(client_config(&pki.client_files(), &[])?);

    // bridge and nginx: child processes.
    let mut bridge =
        setup::start_bridge(&setup::bridge_binary(), dir.path(), &pki, &driver_socket, s.wan, "", &[]).await;
    // An optional second bridge for A/B comparisons in one run.
    let b_env: Vec<(String, String)> = std::env::var("BENCH_BRIDGE_B_ENV")
        .unwrap_or_default()
        .split([',', ' '])
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let b_bin = std::env::var_os("BENCH_BRIDGE_B_BIN").map(PathBuf::from);
    let mut bridge_b = if b_bin.is_some() || !b_env.is_empty() {
        let binary = b_bin.clone().unwrap_or_else(setup::bridge_binary);
        let started = setup::start_bridge(&binary, dir.path(), &pki, &driver_socket, s.wan, "-b", &b_env).await;
        match &started {
            Ok(b) => log(format!(
                "bridge-B ({}, env {b_env:?}): relay pid {}, shim pid {}",
                binary.display(),
                b.relay.pid(),
                b.shim.pid()
            )),
            Err(e) => log(format!("bridge-B: not available: {e}")),
        }
        Some(started)
    } else {
        None
    };
    match &bridge {
        Ok(b) => log(format!(
            "bridge: relay pid {}, shim pid {}, WAN shim pid {}",
            b.relay.pid(),
            b.shim.pid(),
            b.shim_wan.pid()
        )),
        Err(e) => log(format!("bridge: not available: {e}")),
    }
    let mut nginx = nginx::start(dir.path(), &pki, &driver_socket, s.wan).await;
    match &nginx {
        Ok(n) => log(format!("nginx {}: pids {:?}", n.version, n.pair.pids())),
        Err(e) => log(format!("nginx: skipped: {e}")),
    }
    let mut haproxy = haproxy::start(dir.path(), &pki, &driver_socket, s.wan).await;
    match &haproxy {
        Ok(h) => log(format!("haproxy {}: pids {:?}", h.version, h.pair.pids())),
        Err(e) => log(format!("haproxy: skipped: {e}")),
    }

    // copy-chain: forwarders in front of the driver served over mTLS on a
    // Unix socket.
    let driver_tls_socket = dir.path().join("driver-tls/driver.sock");
    let copy_chain = match driver_rt
        .spawn(setup::serve_mtls_uds(driver.clone(), server_config(&pki.server_files())?, driver_tls_socket.clone()))
        .await?
    {
        Ok(()) => floor::start(dir.path(), &driver_tls_socket).await,
        Err(e) => Err(format!("the driver's mTLS socket: {e}")),
    };
    let mut copy_chain = copy_chain.inspect_err(|e| log(format!("copy-chain: not available: {e}")));

    let mut local = vec![
        Avail::Ready(Dial::Uds(driver_socket.clone())),
        Avail::Ready(Dial::Tls { addr: mtls_addr, config: client_tls.clone() }),
        match &bridge {
            Ok(b) => Avail::Ready(Dial::Uds(b.socket.clone())),
            Err(e) => Avail::Skipped(format!("bridge: {e}")),
        },
        match &nginx {
            Ok(n) => Avail::Ready(Dial::Uds(n.pair.socket.clone())),
            Err(e) => Avail::Skipped(format!("nginx: {e}")),
        },
        match &haproxy {
            Ok(h) => Avail::Ready(Dial::Uds(h.pair.socket.clone())),
            Err(e) => Avail::Skipped(format!("haproxy: {e}")),
        },
        match &copy_chain {
            Ok(c) => Avail::Ready(Dial::TlsUds { path: c.socket.clone(), config: client_tls.clone() }),
            Err(e) => Avail::Skipped(format!("copy-chain: {e}")),
        },
    ];
    if let Some(b) = &bridge_b {
        local.push(match b {
            Ok(b) => Avail::Ready(Dial::Uds(b.socket.clone())),
            Err(e) => Avail::Skipped(format!("bridge-B: {e}")),
        });
    }
    let mut wan_paths = vec![
        Avail::Na("direct-uds has no network hop".into()),
        Avail::Ready(Dial::Tls { addr: mtls_wan, config: client_tls.clone() }),
        match &bridge {
            Ok(b) => Avail::Ready(Dial::Uds(b.socket_wan.clone())),
            Err(e) => Avail::Skipped(format!("bridge: {e}")),
        },
        match &nginx {
            Ok(n) => Avail::Ready(Dial::Uds(n.pair.socket_wan.clone())),
            Err(e) => Avail::Skipped(format!("nginx: {e}")),
        },
        match &haproxy {
            Ok(h) => Avail::Ready(Dial::Uds(h.pair.socket_wan.clone())),
            Err(e) => Avail::Skipped(format!("haproxy: {e}")),
        },
        Avail::Na("copy-chain is measured on loopback only".into()),
    ];
    if let Some(b) = &bridge_b {
        wan_paths.push(match b {
            Ok(b) => Avail::Ready(Dial::Uds(b.socket_wan.clone())),
            Err(e) => Avail::Skipped(format!("bridge-B: {e}")),
        });
    }
    if let Some(selected) = &paths {
        for (path, name) in PATHS.iter().enumerate().take(local.len()) {
            if !selected.iter().any(|p| p == name) {
                local[path] = Avail::Skipped("not selected (--paths)".into());
                wan_paths[path] = local[path].clone();
            }
        }
    }
    // Every path must answer before anything is measured.
    for path in 0..local.len() {
        if let Avail::Ready(dial) = &local[path] {
            let check = async {
                let mut client = setup::connect(dial).await?;
                client
                    .get_capabilities(openshell_driver_bridge::proto::compute::GetCapabilitiesRequest {})
                    .await
                    .map_err(|s| format!("GetCapabilities: {:?}: {}", s.code(), s.message()))
            };
            if let Err(e) = tokio::time::timeout(Duration::from_secs(20), check)
                .await
                .unwrap_or_else(|_| Err("GetCapabilities: no answer within 20 s".into()))
            {
                log(format!("{}: does not answer: {e}", PATHS[path]));
                local[path] = Avail::Skipped(format!("{} does not answer: {e}", PATHS[path]));
                wan_paths[path] = local[path].clone();
            }
        }
    }

    if let Some((window, concurrency)) = s.hold {
        let Some((path, Avail::Ready(dial))) = local.iter().enumerate().find(|(_, a)| matches!(a, Avail::Ready(_)))
        else {
            anyhow::bail!("--hold: no selected path is ready");
        };
        log(format!("hold: loading {} at concurrency {concurrency} for {window:?}", PATHS[path]));
        let rate = workloads::unary_throughput(dial.clone(), concurrency, window).await.map_err(anyhow::Error::msg)?;
        log(format!("hold: {} calls/s", report::num(rate[0])));
        return Ok(());
    }

    let mut rows: Vec<Row> = Vec::new();
    let bridge_ok = bridge.as_ref().ok().filter(|_| matches!(local[BRIDGE], Avail::Ready(_)));
    let nginx_ok = nginx.as_ref().ok().filter(|_| matches!(local[NGINX], Avail::Ready(_)));
    let haproxy_ok = haproxy.as_ref().ok().filter(|_| matches!(local[HAPROXY], Avail::Ready(_)));
    let peers = Peers { bridge: bridge_ok, nginx: nginx_ok.map(|n| &n.pair), haproxy: haproxy_ok.map(|h| &h.pair) };
    let copy_ok = copy_chain.as_ref().ok().filter(|_| matches!(local[COPY], Avail::Ready(_)));
    let bridge_b_ok = bridge_b
        .as_ref()
        .and_then(|b| b.as_ref().ok())
        .filter(|_| matches!(local.get(BRIDGE_B), Some(Avail::Ready(_))));

    if wants("memory") {
        rows.extend(memory(&s, &local, &proxy_roles(&peers, copy_ok, bridge_b_ok), &driver).await);
    }

    if wants("unary") {
        let (window, max) = (s.unary_window, s.unary_max_calls);
        let procs = proxy_pids(&peers, copy_ok, bridge_b_ok);
        let cells = run_rounds("unary c=1", s.rounds, &local, 5, move |path, dial| {
            workloads::unary_latency(dial, window, max, procs[path].clone()).boxed()
        })
        .await;
        rows.push(
            Row::new("unary_p50_us", "unary GetSandbox p50, c=1", "us", Better::Lower, cells[0].clone())
                .vs_mtls(Goal::AtMost(2.0))
                .beat_nginx()
                .beat_haproxy(),
        );
        rows.push(
            Row::new("unary_p99_us", "unary GetSandbox p99, c=1", "us", Better::Lower, cells[1].clone())
                .vs_mtls(Goal::AtMost(2.5))
                .beat_nginx()
                .beat_haproxy(),
        );
        rows.push(Row::new(
            "unary_context_switches_per_call",
            "sleeps (voluntary switches) per call, proxies, c=1",
            "switches",
            Better::Lower,
            na_reason(cells[3].clone(), "no proxy process on this path"),
        ));
        rows.push(Row::new(
            "unary_proxy_cpu_us_per_call",
            "CPU per call, all proxy processes, c=1",
            "us",
            Better::Lower,
            na_reason(cells[4].clone(), "no proxy process on this path"),
        ));
    }

    if wants("throughput") {
        let (concurrency, window) = (s.concurrency, s.throughput_window);
        let cells = run_rounds(&format!("unary c={concurrency}"), s.rounds, &local, 1, move |_, dial| {
            workloads::unary_throughput(dial, concurrency, window).boxed()
        })
        .await;
        rows.push(
            Row::new(
                "unary_c64_calls_per_s",
                &format!("unary GetSandbox throughput, c={concurrency}, 1 conn"),
                "calls/s",
                Better::Higher,
                cells[0].clone(),
            )
            .vs_mtls(Goal::AtLeast(0.6))
            .beat_nginx()
            .beat_haproxy(),
        );
    }

    if wants("cpu") {
        let roles = proxy_roles(&peers, copy_ok, bridge_b_ok);
        let (concurrency, batch, limit) = (s.concurrency, s.cpu_batch, s.cpu_time_limit);
        let cells = run_rounds("cpu batch", s.cpu_rounds, &local, 5, move |path, dial| {
            let roles = roles[path].clone();
            async move {
                let (groups, proxies) = match roles {
                    Some(roles) => (roles.to_vec(), true),
                    None => (Vec::new(), false),
                };
                let mut values = workloads::cpu_batch(dial, concurrency, batch, limit, groups).await?;
                if !proxies {
                    values[1] = f64::NAN;
                }
                Ok(values)
            }
            .boxed()
        })
        .await;
        let scaled = if batch == 100_000 { String::new() } else { format!(" (x{})", 100_000 / batch) };
        let no_proxy = "no proxy process on this path";
        rows.push(Row::new(
            "cpu_proxy_s_per_100k",
            &format!("CPU per 100k calls, all proxy processes{scaled}"),
            "s",
            Better::Lower,
            na_reason(cells[1].clone(), no_proxy),
        ));
        rows.push(Row::new(
            "cpu_client_side_s_per_100k",
            &format!("CPU per 100k calls, shim | peer front{scaled}"),
            "s",
            Better::Lower,
            na_reason(cells[3].clone(), no_proxy),
        ));
        rows.push(Row::new(
            "cpu_server_side_s_per_100k",
            &format!("CPU per 100k calls, relay | peer back{scaled}"),
            "s",
            Better::Lower,
            na_reason(cells[4].clone(), no_proxy),
        ));
        rows.push(Row::new(
            "cpu_bench_s_per_100k",
            &format!("CPU per 100k calls, client+driver{scaled}"),
            "s",
            Better::Lower,
            cells[2].clone(),
        ));
    }

    if wants("watch") {
        for watchers in [1usize, 16] {
            let (warmup, window, driver, driver_rt) =
                (s.watch_warmup, s.watch_window, driver.clone(), driver_rt.clone());
            let cells = run_rounds(&format!("watch x{watchers}"), s.rounds, &local, 2, move |_, dial| {
                workloads::watch_rate(dial, driver.clone(), driver_rt.clone(), watchers, warmup, window).boxed()
            })
            .await;
            rows.push(
                Row::new(
                    &format!("watch_{watchers}_events_per_s"),
                    &format!("WatchSandboxes events/s, {watchers} watcher{}", if watchers == 1 { "" } else { "s" }),
                    "events/s",
                    Better::Higher,
                    cells[0].clone(),
                )
                .vs_mtls(Goal::AtLeast(0.8))
                .beat_nginx()
                .beat_haproxy(),
            );
        }
    }

    if wants("list") || wants("wan") {
        let started_at = Instant::now();
        let (populated, size) = (driver.clone(), s.list_size);
        let bytes = driver_rt
            .spawn(async move { workloads::populate(&populated, size).await })
            .await?
            .map_err(anyhow::Error::msg)?;
        log(format!(
            "driver holds {} sandboxes; the ListSandboxes answer is {:.2} MiB (made in {:.1} s)",
            driver.sandbox_count(),
            bytes as f64 / 1048576.0,
            started_at.elapsed().as_secs_f64()
        ));
        let expect = driver.sandbox_count();
        let size = format!("{}k sandboxes, {:.1} MiB", expect / 1000, bytes as f64 / 1048576.0);
        if wants("list") {
            let calls = s.list_calls;
            let cells = run_rounds("list", s.rounds, &local, 1, move |_, dial| {
                workloads::list_large(dial, calls, expect, Duration::from_secs(30)).boxed()
            })
            .await;
            rows.push(Row::new(
                "list_large_ms",
                &format!("ListSandboxes ({size})"),
                "ms",
                Better::Lower,
                cells[0].clone(),
            ));
        }
        if wants("wan") {
            let calls = s.wan_unary_calls;
            let cells = run_rounds("WAN unary", s.rounds, &wan_paths, 2, move |_, dial| {
                workloads::wan_unary(dial, calls).boxed()
            })
            .await;
            let link = format!("{} ms, {} Mbit/s", s.wan.delay.as_millis(), s.wan.bits_per_second / 1e6);
            rows.push(Row::new(
                "wan_unary_p50_ms",
                &format!("WAN ({link}) unary GetSandbox p50"),
                "ms",
                Better::Lower,
                cells[0].clone(),
            ));
            rows.push(Row::new(
                "wan_unary_p99_ms",
                &format!("WAN ({link}) unary GetSandbox p99"),
                "ms",
                Better::Lower,
                cells[1].clone(),
            ));
            let calls = s.wan_list_calls;
            let cells = run_rounds("WAN list", s.rounds, &wan_paths, 1, move |_, dial| {
                workloads::list_large(dial, calls, expect, Duration::from_secs(60)).boxed()
            })
            .await;
            rows.push(
                Row::new(
                    "wan_list_large_ms",
                    &format!("WAN ListSandboxes ({size})"),
                    "ms",
                    Better::Lower,
                    cells[0].clone(),
                )
                .vs_mtls(Goal::AtMost(1.2))
                .beat_nginx()
                .beat_haproxy(),
            );
        }
    }

    // Memory after the whole run, under every load above (for
    // information): Pss now, and the peaks of RSS.
    let mib = |kib: u64| Cell::Values(vec![kib as f64 / 1024.0]);
    let at_end = |read: fn(&[u32]) -> u64| -> Vec<Cell> {
        proxy_pids(&peers, None, None)
            .into_iter()
            .take(local.len())
            .enumerate()
            .map(|(path, pids)| match &local[path] {
                Avail::Ready(_) if !pids.is_empty() => mib(read(&pids)),
                Avail::Skipped(r) => Cell::Skipped(r.clone()),
                _ => Cell::Na(not_measured(path).into()),
            })
            .collect()
    };
    rows.push(Row::new(
        "pss_run_end_total_mib",
        "Pss after the whole run, all proxy processes",
        "MiB",
        Better::Lower,
        at_end(procfs::pss_sum),
    ));
    rows.push(
        Row::new(
            "rss_run_peak_total_mib",
            "peak RSS (VmHWM) over the run, summed per process",
            "MiB",
            Better::Lower,
            at_end(|pids| procfs::rss_sum(pids).peak_kib),
        )
        .no_peer_ratios(),
    );

    // The children must have survived everything.
    let mut notes: Vec<String> = Vec::new();
    for row in rows.iter_mut() {
        while row.cells.len() < local.len() {
            row.cells.push(Cell::Na(not_measured(row.cells.len()).into()));
        }
    }
    if let Ok(c) = copy_chain.as_mut() {
        if let Err(e) = c.check_alive() {
            notes.push(format!("WARNING: {e}"));
        }
        notes.push(
            "copy-chain: the client's TLS over a Unix socket -> forwarder -> loopback TCP -> forwarder -> the driver's own mTLS server on a Unix socket; the forwarders are this bench re-run as child processes (tokio single-thread runtime, 64 KiB copies, no TLS or HTTP/2 of their own): the cost of the bridge's shape with no work in it"
                .into(),
        );
    }
    if let Some(Ok(b)) = bridge_b.as_mut() {
        for proc in [&mut b.relay, &mut b.shim, &mut b.shim_wan] {
            if let Err(e) = proc.check_alive() {
                notes.push(format!("WARNING: {e}"));
            }
        }
        notes.push(format!(
            "bridge-B: binary {}, extra environment {:?} (A/B comparison; the targets are judged on `bridge`)",
            b.binary.display(),
            b_env
        ));
    }
    if let Ok(b) = bridge.as_mut() {
        for proc in [&mut b.relay, &mut b.shim, &mut b.shim_wan] {
            if let Err(e) = proc.check_alive() {
                notes.push(format!("WARNING: {e}"));
            }
        }
        notes.push(format!("bridge binary: {} (shim and relay run as child processes)", b.binary.display()));
    }
    if let Ok(n) = nginx.as_mut() {
        notes.extend(n.pair.check_alive().into_iter().map(|e| format!("WARNING: {e}")));
        notes.push(format!(
            "nginx {} ({}): two instances (front in place of the shim, back in place of the relay), 2 workers each, upstream keepalive on both hops, TLS 1.3, client certificate verified",
            n.version,
            n.binary.display()
        ));
    }
    if let Ok(h) = haproxy.as_mut() {
        notes.extend(h.pair.check_alive().into_iter().map(|e| format!("WARNING: {e}")));
        notes.push(format!(
            "haproxy {} ({}): two instances (front in place of the shim, back in place of the relay), one process with one thread each, mode http, HTTP/2 to the servers with http-reuse always, TLS 1.3, client certificate verified",
            h.version,
            h.binary.display()
        ));
    }
    notes.push(format!(
        "memory: Pss (/proc/PID/smaps_rollup) summed over each path's processes, shared pages divided among the processes mapping them; peak RSS (VmHWM) summed per process counts a master's pages shared with its workers once per process, so it carries the absolute targets only and no ratio to a peer; bridge/peer targets: PASS when the rounds' ranges are apart ({}+ rounds each) or the medians differ by {:.0} % or more in the bridge's favour, TIE inside that, MISS beyond it the other way",
        verdict::MIN_ROUNDS,
        verdict::MARGIN * 100.0
    ));
    notes.push("direct-mtls: the driver served by tonic (default settings) over rustls mTLS on loopback".into());
    notes.push(
        "the reference driver and the watch event generator run in the bench process on a runtime of their own (2 workers); the clients and the WAN proxies on another (2 workers)"
            .into(),
    );
    notes.push(
        "watch: closed loop, the generator stops/starts one sandbox (4 events per cycle) at most 512 events ahead of the slowest watcher; events/s summed over watchers"
            .into(),
    );
    if s.quick {
        notes.push("quick mode: short rounds; numbers are indicative only".into());
    }
    let load_end = loadavg();
    notes.push(format!("load average at start {load_start}, at end {load_end}"));

    let elapsed = started().elapsed().as_secs_f64();
    let (verdicts, tally) = report::verdicts(&rows);
    let mut out = String::new();
    out.push_str(&format!(
        "\nopenshell-driver-bridge side-by-side benchmark ({} mode, {date}, {elapsed:.0} s)\n",
        if s.quick { "quick" } else { "full" }
    ));
    for (k, v) in &machine {
        out.push_str(&format!("  {k:<8} {v}\n"));
    }
    out.push('\n');
    out.push_str(&report::table(&rows));
    out.push_str(&format!("\ntargets: {}\n{verdicts}", tally.line()));
    out.push('\n');
    for note in &notes {
        out.push_str(&format!("- {note}\n"));
    }
    println!("{out}");

    let json = format!(
        "{{\n  \"benchmark\": \"openshell-driver-bridge side-by-side\",\n  \"date\": {},\n  \"mode\": {},\n  \"duration_s\": {},\n  \"machine\": {{{}}},\n  \"settings\": {{{}}},\n  \"notes\": [{}],\n  \"summary\": {},\n  \"rows\": {}\n}}\n",
        report::json_string(&date),
        report::json_string(if s.quick { "quick" } else { "full" }),
        report::json_number(elapsed.round()),
        machine.iter().map(|(k, v)| format!("{}: {}", report::json_string(k), report::json_string(v))).collect::<Vec<_>>().join(", "),
        s.describe().iter().map(|(k, v)| format!("{}: {}", report::json_string(k), report::json_string(v))).collect::<Vec<_>>().join(", "),
        notes.iter().map(|n| report::json_string(n)).collect::<Vec<_>>().join(", "),
        tally.json(),
        report::json_rows(&rows),
    );
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let json_path = out_dir.join("results.json");
    std::fs::write(&json_path, json)?;
    log(format!("wrote {}", json_path.display()));

    shutdown.stop_now();
    drop(bridge);
    drop(bridge_b);
    drop(copy_chain);
    drop(nginx);
    drop(haproxy);
    Ok(())
}

/// Why a row has no value for a path it was not measured on.
fn not_measured(path: usize) -> &'static str {
    match path {
        COPY => "not measured for copy-chain",
        BRIDGE_B => "not measured for bridge-B",
        _ => "no proxy process on this path",
    }
}

/// The bridge and the peers when they run and answer.
struct Peers<'a> {
    bridge: Option<&'a setup::Bridge>,
    nginx: Option<&'a peer::Pair>,
    haproxy: Option<&'a peer::Pair>,
}

/// The proxy processes of each path by role: [client side (shim, peer
/// front), server side (relay, peer back)]; none for the direct paths.
fn proxy_roles(
    peers: &Peers,
    copy_chain: Option<&floor::CopyChain>,
    bridge_b: Option<&setup::Bridge>,
) -> Vec<Option<[Vec<u32>; 2]>> {
    let bridge_roles = |b: &setup::Bridge| [vec![b.shim.pid()], vec![b.relay.pid()]];
    let pair_roles = |p: &peer::Pair| [p.front_pids(), p.back_pids()];
    vec![
        None,
        None,
        peers.bridge.map(bridge_roles),
        peers.nginx.map(pair_roles),
        peers.haproxy.map(pair_roles),
        copy_chain.map(floor::CopyChain::roles),
        bridge_b.map(bridge_roles),
    ]
}

/// Every proxy process of each path.
fn proxy_pids(peers: &Peers, copy_chain: Option<&floor::CopyChain>, bridge_b: Option<&setup::Bridge>) -> Vec<Vec<u32>> {
    proxy_roles(peers, copy_chain, bridge_b)
        .into_iter()
        .map(|roles| roles.map(|r| r.concat()).unwrap_or_default())
        .collect()
}

/// `target/` of this build: the bench runs as target/<profile>/deps/bridge-*.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Memory of the proxy processes idle and with many open watches: per role
/// (client side: shim or the peer's front; server side: relay or the
/// peer's back) and in total. The comparison is on Pss (shared pages
/// divided among the processes mapping them, so nginx's master and workers
/// are not charged the pages they share once each); the peak RSS (VmHWM)
/// of the bridge's processes carries the absolute targets.
async fn memory(s: &Settings, local: &[Avail], roles: &[Option<[Vec<u32>; 2]>], driver: &DemoDriver) -> Vec<Row> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let count = s.memory_watches;
    let backlog = driver.sandbox_count();
    let proxies = [BRIDGE, NGINX, HAPROXY];
    // One reading: [client side, server side, total] of Pss now, then
    // [client side, server side] of peak RSS.
    type Reading = [f64; 5];
    let read = |[client, server]: &[Vec<u32>; 2]| -> Reading {
        let (c, s) = (procfs::pss_sum(client), procfs::pss_sum(server));
        let (cr, sr) = (procfs::rss_sum(client), procfs::rss_sum(server));
        [mib(c), mib(s), mib(c + s), mib(cr.peak_kib), mib(sr.peak_kib)]
    };
    // [path] -> [measure] -> samples
    let mut idle: Vec<[Vec<f64>; 5]> = vec![Default::default(); local.len()];
    let mut open: Vec<[Vec<f64>; 5]> = vec![Default::default(); local.len()];
    let mut errors: Vec<Option<String>> = vec![None; local.len()];
    let shown = |r: &Reading| {
        format!(
            "client side Pss {:.1} MiB (peak RSS {:.1}), server side Pss {:.1} MiB (peak RSS {:.1})",
            r[0], r[3], r[1], r[4]
        )
    };
    // Idle: after start-up and one call (the links are up).
    for path in proxies {
        if let (Avail::Ready(_), Some(Some(pids))) = (&local[path], roles.get(path)) {
            let reading = read(pids);
            log(format!("memory idle: {}: {}", PATHS[path], shown(&reading)));
            for (k, v) in reading.into_iter().enumerate() {
                idle[path][k].push(v);
            }
        }
    }
    // With watches open: after each round of opening them, while open.
    for round in 0..s.memory_rounds {
        for path in proxies {
            let (Avail::Ready(dial), Some(Some(pids))) = (&local[path], roles.get(path)) else { continue };
            if errors[path].is_some() {
                continue;
            }
            let opened = Instant::now();
            match workloads::open_watches(dial, count, backlog).await {
                Ok((client, tasks)) => {
                    let took = opened.elapsed();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let reading = read(pids);
                    log(format!(
                        "memory, {count} watches: round {}/{}: {}: {}; opened in {:.2} s",
                        round + 1,
                        s.memory_rounds,
                        PATHS[path],
                        shown(&reading),
                        took.as_secs_f64()
                    ));
                    for (k, v) in reading.into_iter().enumerate() {
                        open[path][k].push(v);
                    }
                    tasks.iter().for_each(|t| t.abort());
                    drop(client);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => {
                    log(format!("memory, {count} watches: {}: FAILED: {e}", PATHS[path]));
                    errors[path] = Some(format!("{count} watches: {e}"));
                }
            }
        }
    }
    let cells = |samples: &[[Vec<f64>; 5]], k: usize| -> Vec<Cell> {
        (0..local.len())
            .map(|path| match (&local[path], &errors[path]) {
                (Avail::Skipped(r), _) => Cell::Skipped(r.clone()),
                (Avail::Na(r), _) => Cell::Na(r.clone()),
                _ if !proxies.contains(&path) => Cell::Na(not_measured(path).into()),
                (_, Some(e)) => Cell::Failed(e.clone()),
                _ if samples[path][k].is_empty() => Cell::Failed("not measured".into()),
                _ => Cell::Values(samples[path][k].clone()),
            })
            .collect()
    };
    let watches = format!("{count} watches");
    let mut rows = Vec::new();
    for (samples, key, when) in [(&idle, "idle", "idle"), (&open, "watches", watches.as_str())] {
        rows.push(Row::new(
            &format!("pss_{key}_client_side_mib"),
            &format!("Pss {when}, shim | peer front"),
            "MiB",
            Better::Lower,
            cells(samples, 0),
        ));
        rows.push(Row::new(
            &format!("pss_{key}_server_side_mib"),
            &format!("Pss {when}, relay | peer back"),
            "MiB",
            Better::Lower,
            cells(samples, 1),
        ));
        rows.push(Row::new(
            &format!("pss_{key}_total_mib"),
            &format!("Pss {when}, all proxy processes"),
            "MiB",
            Better::Lower,
            cells(samples, 2),
        ));
        let limit = if key == "idle" { 20.0 } else { 64.0 };
        rows.push(
            Row::new(
                &format!("rss_{key}_client_side_mib"),
                &format!("peak RSS (VmHWM) {when}, shim | peer front"),
                "MiB",
                Better::Lower,
                cells(samples, 3),
            )
            .absolute(Goal::Below(limit))
            .no_peer_ratios(),
        );
        rows.push(
            Row::new(
                &format!("rss_{key}_server_side_mib"),
                &format!("peak RSS (VmHWM) {when}, relay | peer back"),
                "MiB",
                Better::Lower,
                cells(samples, 4),
            )
            .absolute(Goal::Below(limit))
            .no_peer_ratios(),
        );
    }
    rows
}
