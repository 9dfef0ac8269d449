//! Taking connections for the NBD and NFS servers: one failed accept (out
//! of file descriptors, a connection reset before it was taken) must not
//! end an export, and the number of clients is bounded, since each may
//! hold tens of MiB of reads in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::net::{TcpListener, TcpStream};

/// Clients one export server serves at once.
pub const MAX_CLIENTS: i64 = 64;

/// The next client to serve, counted in `clients` (the caller subtracts
/// it when the client is gone); failed accepts are logged and retried,
/// clients past [`MAX_CLIENTS`] turned away.
pub async fn next_client(
    listener: &TcpListener,
    clients: &AtomicI64,
    what: &str,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Err(e) => {
                tracing::warn!("{what}: accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok((_, peer)) if clients.load(Ordering::Relaxed) >= MAX_CLIENTS => {
                tracing::warn!("{what} client {peer}: {MAX_CLIENTS} connected already; refused");
            }
            Ok(c) => {
                clients.fetch_add(1, Ordering::Relaxed);
                return c;
            }
        }
    }
}
