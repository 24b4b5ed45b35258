//! The relay's callback listener (`--callback-listen`): sandboxes' TCP
//! connections to their gateway, accepted like every other listener's
//! (descriptor reserve, folded accept failures) and handed to the callback
//! hub, which carries each through a shim's callback link.

use tokio::net::TcpListener;

use super::accept::Acceptor;
use crate::callback::relay::Hub;
use crate::shutdown::Shutdown;

/// Accepts sandbox connections on `listener` until draining begins.
pub async fn run(listener: TcpListener, hub: Hub, shutdown: Shutdown) {
    let name = match listener.local_addr() {
        Ok(addr) => format!("callback {addr}"),
        Err(_) => "callback".to_owned(),
    };
    let acceptor = Acceptor::new(listener, name);
    loop {
        let (socket, remote) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = shutdown.draining().cancelled() => break,
        };
        crate::connect::tcp::tune_tcp(&socket);
        hub.take(socket, remote, &shutdown);
    }
}
