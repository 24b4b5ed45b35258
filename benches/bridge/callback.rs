//! The way back, measured (`cargo bench --bench bridge -- --callback`):
//! a sandbox's TCP connection to a gateway's listener, through the relay's
//! callback listener and the shim's callback link, beside a direct TCP
//! connection to the same listener. Relay and shim run in this process on
//! loopback (their own threads are the runtime's), so the figures are
//! ratios of the way back to direct on this machine, not absolute
//! capacities.
//!
//! - connect latency: connect, one byte there and back; median and p99 of
//!   sequential connections.
//! - throughput: one connection echoing N MiB both ways at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openshell_driver_bridge::admit::policy::{Access, Rule};
use openshell_driver_bridge::callback::relay::RelayCallback;
use openshell_driver_bridge::callback::shim::ShimCallback;
use openshell_driver_bridge::callback::CallbackSettings;
use openshell_driver_bridge::role::relay::{DriverTarget, RelayConfig};
use openshell_driver_bridge::role::shim::{ShimConfig, Upstream};
use openshell_driver_bridge::role::RoleSettings;
use openshell_driver_bridge::shutdown::Shutdown;
use openshell_driver_bridge::tls::config::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn run(quick: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = openshell_driver_bridge::pki::init(&dir.path().join("certs"), &[], &[], true)?;
    let files = |cert: &std::path::Path, key: &std::path::Path| TlsFiles::new(&pki.ca, cert, key);
    let echo = echo_server().await?;
    let shutdown = Shutdown::new();
    let relay = openshell_driver_bridge::role::relay::start(
        RelayConfig {
            listen: "127.0.0.1:0".parse()?,
            driver: DriverTarget::Unix(dir.path().join("driver/driver.sock")),
            unsafe_driver_target: false,
            tls: files(&pki.server_cert, &pki.server_key),
            rules: vec![Rule {
                pattern: "dns:openshell-gateway".parse().map_err(anyhow::Error::msg)?,
                access: Access::Full,
            }],
            any_client: None,
            policy_source: None,
            settings: RoleSettings::default(),
            callback: Some(RelayCallback {
                listen: "127.0.0.1:0".parse()?,
                client: "dns:openshell-gateway".parse().map_err(anyhow::Error::msg)?,
                settings: CallbackSettings::default(),
            }),
        },
        shutdown.clone(),
    )
    .await?;
    let shim = openshell_driver_bridge::role::shim::start(
        ShimConfig {
            socket: dir.path().join("shim/compute-driver.sock"),
            upstreams: vec![Upstream { host: "127.0.0.1".into(), port: relay.local_addr.port() }],
            server_name: Some("localhost".into()),
            expect_server: vec![],
            tls: files(&pki.client_cert, &pki.client_key),
            allow_uids: vec![],
            settings: RoleSettings::default(),
            callback: Some(ShimCallback { target: echo.to_string(), settings: CallbackSettings::default() }),
            proxy: openshell_driver_bridge::connect::proxy::ProxySetting::Off,
            proxy_ca: None,
        },
        shutdown.clone(),
    )?;
    let callback = relay.callback_addr.ok_or_else(|| anyhow::anyhow!("no callback listener"))?;
    for _ in 0..200 {
        if shim.forwarder.metrics().callback.links() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (connects, mib) = if quick { (100, 64) } else { (500, 256) };
    println!("the way back vs direct TCP to the same echo listener (loopback, relay and shim in this process)");
    let direct_latency = connect_latency(echo, connects).await?;
    let callback_latency = connect_latency(callback, connects).await?;
    for (what, direct, way) in [
        ("connect+1 byte, median", direct_latency.0, callback_latency.0),
        ("connect+1 byte, p99", direct_latency.1, callback_latency.1),
    ] {
        println!(
            "  {what:<24} direct {:>8.1} µs   way back {:>8.1} µs   ratio {:>5.2}",
            micros(direct),
            micros(way),
            way.as_secs_f64() / direct.as_secs_f64()
        );
    }
    let direct = throughput(echo, mib).await?;
    let way = throughput(callback, mib).await?;
    println!(
        "  {:<24} direct {:>8.0} MiB/s   way back {:>8.0} MiB/s   ratio {:>5.2}",
        format!("throughput {mib} MiB each way"),
        direct,
        way,
        way / direct
    );
    shutdown.stop_now();
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let (mut reader, mut writer) = tcp.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
                let _ = writer.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Median and p99 of `count` sequential connect + one byte there and back.
async fn connect_latency(addr: SocketAddr, count: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut byte)).await??;
        samples.push(started.elapsed());
    }
    samples.sort();
    Ok((samples[count / 2], samples[(count * 99 / 100).min(count - 1)]))
}

/// MiB/s of one connection echoing `mib` MiB (sent and received at once).
async fn throughput(addr: SocketAddr, mib: usize) -> anyhow::Result<f64> {
    let total = mib << 20;
    let tcp = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = tcp.into_split();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..mib {
            writer.write_all(&chunk).await?;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0;
    while received < total {
        let n = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the connection ended after {received} of {total} bytes");
        received += n;
    }
    sending.await??;
    Ok(mib as f64 / started.elapsed().as_secs_f64())
}
