//! Everything the paths need: certificates, the reference driver (on its
//! socket and, for `direct-mtls`, behind tonic's own mTLS server), the
//! bridge's roles as child processes of the real binary, and clients.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use openshell_driver_bridge::demo::driver::DemoDriver;
use openshell_driver_bridge::pki::{self, Ca, LeafSpec};
use openshell_driver_bridge::proto::compute::compute_driver_client::ComputeDriverClient;
use openshell_driver_bridge::tls::config::TlsFiles;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

pub type Client = ComputeDriverClient<Channel>;

pub const CLIENT_ID: &str = "openshell-gateway";
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A development CA with one server (localhost, 127.0.0.1) and one client
/// certificate, written to files as an operator would have them.
pub struct Pki {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

impl Pki {
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::new("bench CA")?;
        let ca_file = dir.join("ca.pem");
        pki::write_pem(&ca_file, &ca.cert_pem(), false)?;
        let issue = |name: &str, spec: &LeafSpec| -> anyhow::Result<(PathBuf, PathBuf)> {
            let leaf = ca.issue(spec)?;
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}-key.pem"));
            pki::write_pem(&cert, &leaf.cert_pem, false)?;
            pki::write_pem(&key, &leaf.key_pem, true)?;
            Ok((cert, key))
        };
        let server = issue("server", &LeafSpec::server(&["localhost", "127.0.0.1"]))?;
        let client = issue("client", &LeafSpec::client(CLIENT_ID))?;
        Ok(Pki { ca: ca_file, server, client })
    }

    pub fn server_files(&self) -> TlsFiles {
        files(&self.ca, &self.server)
    }

    pub fn client_files(&self) -> TlsFiles {
        files(&self.ca, &self.client)
    }
}

fn files(ca: &Path, (cert, key): &(PathBuf, PathBuf)) -> TlsFiles {
    TlsFiles { reload_interval: Duration::from_secs(60), ..TlsFiles::new(ca, cert, key) }
}

/// How a client reaches a path.
#[derive(Clone)]
pub enum Dial {
    /// h2c on a Unix socket, as the gateway dials its driver.
    Uds(PathBuf),
    /// HTTP/2 over mutual TLS on TCP.
    Tls { addr: SocketAddr, config: Arc<rustls::ClientConfig> },
    /// HTTP/2 over mutual TLS on a Unix socket (`copy-chain`).
    TlsUds { path: PathBuf, config: Arc<rustls::ClientConfig> },
}

/// A compute-driver client on a fresh connection (one tonic `Channel`),
/// accepting messages up to 64 MiB.
pub async fn connect(dial: &Dial) -> Result<Client, String> {
    let channel = match dial {
        Dial::Uds(path) => openshell_driver_bridge::grpc::client::uds_channel(path)
            .await
            .map_err(|e| format!("connect {}: {e:?}", path.display()))?,
        Dial::Tls { addr, config } => {
            let addr = *addr;
            let config = config.clone();
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let config = config.clone();
                    async move {
                        let tcp = TcpStream::connect(addr).await?;
                        tcp.set_nodelay(true)?;
                        let name = ServerName::try_from("localhost").expect("valid name");
                        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                        Ok::<_, io::Error>(TokioIo::new(tls))
                    }
                }))
                .await
                .map_err(|e| format!("connect {addr}: {e:?}"))?
        }
        Dial::TlsUds { path, config } => {
            let (path, config, shown) = (path.clone(), config.clone(), path.display().to_string());
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let (path, config) = (path.clone(), config.clone());
                    async move {
                        let stream = UnixStream::connect(path).await?;
                        let name = ServerName::try_from("localhost").expect("valid name");
                        let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
                        Ok::<_, io::Error>(TokioIo::new(tls))
                    }
                }))
                .await
                .map_err(|e| format!("connect {shown}: {e:?}"))?
        }
    };
    Ok(ComputeDriverClient::new(channel).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
}

/// A TLS stream tonic's server accepts (tonic implements `Connected` for
/// rustls streams only with its own TLS features, which we do not use).
struct TlsIo<S>(tokio_rustls::server::TlsStream<S>);

impl<S> Connected for TlsIo<S> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// `direct-mtls`: the reference driver served by tonic itself over mutual
/// TLS on loopback (tonic's default server settings), the way a driver that
/// speaks mTLS on its own would run.
pub async fn serve_mtls(driver: DemoDriver, config: rustls::ServerConfig) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    serve_tls(driver, config, listener);
    Ok(addr)
}

/// The same server as [`serve_mtls`] on a Unix socket (`copy-chain`'s end).
pub async fn serve_mtls_uds(driver: DemoDriver, config: rustls::ServerConfig, path: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    serve_tls(driver, config, UnixListener::bind(&path)?);
    Ok(())
}

/// The listeners the bench serves on. TCP connections get `TCP_NODELAY`,
/// as on every hop of every path.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn next_connection(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn next_connection(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn next_connection(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// tonic's server over TLS on the connections `listener` accepts.
fn serve_tls<L: Listener>(driver: DemoDriver, config: rustls::ServerConfig, listener: L) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<TlsIo<L::Stream>>>(64);
    tokio::spawn(async move {
        loop {
            let Ok(stream) = listener.next_connection().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    let _ = tx.send(Ok(TlsIo(tls))).await;
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|io| (io, rx)) });
    let server = tonic::transport::Server::builder().add_service(driver.into_server()).serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("mTLS driver server stopped: {e}");
        }
    });
}

/// A child process, ended (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Result<Proc, String> {
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        // SAFETY: prctl is async-signal-safe; it makes the child receive
        // SIGTERM if the bench dies without cleaning up (killed, timed out).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the end of its log when the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}): {}", self.name, self.log_tail())),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; the child binds it next).
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts on `addr`.
pub async fn wait_tcp(addr: SocketAddr, proc: &mut Proc, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!("{} is not accepting on {addr} after {limit:?}: {}", proc.name, proc.log_tail()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until something accepts on the Unix socket `path`.
pub async fn wait_uds(path: &Path, proc: &mut Proc, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} is not accepting on {} after {limit:?}: {}",
                proc.name,
                path.display(),
                proc.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The bridge as an operator runs it: `relay` next to the driver, `shim`
/// next to the client, each its own process of the real binary. A second
/// shim reaches the relay through the emulated wide-area link.
pub struct Bridge {
    pub relay: Proc,
    pub shim: Proc,
    pub shim_wan: Proc,
    pub socket: PathBuf,
    pub socket_wan: PathBuf,
    pub binary: PathBuf,
}

/// `tag` keeps the files of a second bridge apart; `env` is added to both
/// roles' environment.
pub async fn start_bridge(
    binary: &Path,
    dir: &Path,
    pki: &Pki,
    driver_socket: &Path,
    wan: crate::wan::WanLink,
    tag: &str,
    env: &[(String, String)],
) -> Result<Bridge, String> {
    if !binary.exists() {
        return Err(format!("{} not found; run `cargo build --release` first", binary.display()));
    }
    let port = free_port().map_err(|e| e.to_string())?;
    let relay_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut relay = Proc::spawn(
        &format!("relay{tag}"),
        Command::new(binary)
            .env_remove("RUST_LOG")
            .envs(env.iter().cloned())
            .arg("relay")
            .args(["--listen", &relay_addr.to_string()])
            .args(["--driver-socket", &path(driver_socket)])
            .args(["--ca", &path(&pki.ca), "--cert", &path(&pki.server.0), "--key", &path(&pki.server.1)])
            .args(["--allow-client", &format!("dns:{CLIENT_ID}")]),
        dir.join(format!("relay{tag}.log")),
    )?;
    wait_tcp(relay_addr, &mut relay, Duration::from_secs(10)).await?;
    let proxy = crate::wan::start(relay_addr, wan).await.map_err(|e| format!("WAN proxy: {e}"))?;
    let shim_cmd = |socket: &Path, upstream: SocketAddr| {
        let mut command = Command::new(binary);
        command
            .env_remove("RUST_LOG")
            .envs(env.iter().cloned())
            .arg("shim")
            .args(["--socket", &path(socket)])
            .args(["--upstream", &format!("https://{upstream}")])
            .args(["--ca", &path(&pki.ca), "--cert", &path(&pki.client.0), "--key", &path(&pki.client.1)]);
        command
    };
    let socket = dir.join(format!("shim{tag}/compute-driver.sock"));
    let socket_wan = dir.join(format!("shim{tag}-wan/compute-driver.sock"));
    let mut shim =
        Proc::spawn(&format!("shim{tag}"), &mut shim_cmd(&socket, relay_addr), dir.join(format!("shim{tag}.log")))?;
    let mut shim_wan = Proc::spawn(
        &format!("shim{tag} (WAN)"),
        &mut shim_cmd(&socket_wan, proxy),
        dir.join(format!("shim{tag}-wan.log")),
    )?;
    wait_uds(&socket, &mut shim, Duration::from_secs(10)).await?;
    wait_uds(&socket_wan, &mut shim_wan, Duration::from_secs(10)).await?;
    Ok(Bridge { relay, shim, shim_wan, socket, socket_wan, binary: binary.to_path_buf() })
}

/// The bridge binary: the one cargo built for this bench.
pub fn bridge_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_openshell-driver-bridge"))
}
