//! A TCP listener that holds at most `server.max_connections` connections open. Each one
//! costs buffers whatever it sends, so without a cap a flood of connections would grow
//! memory without bound; at the cap, new connections wait in the kernel's accept backlog
//! until one closes. Requests on accepted connections are bounded separately (admission).
//!
//! On shutdown it answers, rather than resets, what is already waiting: for [`GRACE`] after
//! the signal it takes every new connection (the backlog first) and answers it 503 with
//! `Retry-After` itself, while hyper reads the requests already sent on the connections it
//! holds (a connection closed with a request unread is reset); then it says it is drained and
//! the server stops accepting. Only a connection completing its handshake in that last
//! instant can still be reset, which is why a balancer should stop sending before SIGTERM.

use axum::serve::Listener;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

/// How long after the shutdown signal new connections are answered 503 here: long enough for
/// hyper to read the requests already sent on connections it holds, short next to the time a
/// balancer takes to notice a replica is going away.
const GRACE: Duration = Duration::from_millis(300);

/// The body of [`super::errors::ApiError::shutting_down`], written by hand: these connections
/// never reach the router.
const SHUTTING_DOWN: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
    retry-after: 1\r\nconnection: close\r\ncontent-length: 64\r\n\r\n\
    {\"error\":\"the server is shutting down\",\"error_type\":\"Unhealthy\"}";

pub struct CappedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    /// Becomes true on shutdown.
    draining: watch::Receiver<bool>,
    /// Told once the backlog is empty after shutdown began.
    drained: Option<oneshot::Sender<()>>,
}

impl CappedListener {
    pub fn new(
        inner: TcpListener,
        max_connections: usize,
        draining: watch::Receiver<bool>,
        drained: oneshot::Sender<()>,
    ) -> Self {
        CappedListener { inner, slots: Arc::new(Semaphore::new(max_connections)), draining, drained: Some(drained) }
    }

    /// Shutdown: answers every connection 503 for [`GRACE`], then reports the listener drained.
    async fn refuse_until_drained(&mut self) {
        let end = tokio::time::Instant::now() + GRACE;
        loop {
            tokio::select! {
                accepted = self.inner.accept() => {
                    if let Ok((io, _)) = accepted {
                        tokio::spawn(refuse(io));
                    }
                }
                () = tokio::time::sleep_until(end) => break,
            }
        }
        if let Some(drained) = self.drained.take() {
            let _ = drained.send(());
        }
    }
}

/// Answers 503 (shutting down), then reads what the client sent until it closes (at most a
/// second), so that closing does not reset the connection and lose the answer.
async fn refuse(mut io: TcpStream) {
    let _ = io.set_nodelay(true);
    if io.write_all(SHUTTING_DOWN.as_bytes()).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

impl Listener for CappedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            if *self.draining.borrow() {
                self.refuse_until_drained().await;
                return std::future::pending().await;
            }
            let CappedListener { inner, slots, draining, .. } = self;
            tokio::select! {
                slot = slots.clone().acquire_owned() => {
                    let Ok(slot) = slot else {
                        // The semaphore is never closed; if it were, accept nothing more.
                        return std::future::pending().await;
                    };
                    tokio::select! {
                        // Retries (with a pause) on errors such as running out of file descriptors.
                        (io, addr) = Listener::accept(inner) => return (Connection::new(io, slot), addr),
                        () = until_draining(draining) => {}
                    }
                }
                () = until_draining(draining) => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn until_draining(draining: &mut watch::Receiver<bool>) {
    if draining.wait_for(|&d| d).await.is_err() {
        // The sender is gone: shutdown will never be signalled this way.
        std::future::pending::<()>().await;
    }
}

/// An accepted connection; its slot frees when it closes.
pub struct Connection {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit) -> Connection {
        // Small JSON responses must not wait for Nagle's algorithm.
        let _ = io.set_nodelay(true);
        Connection { io, _slot: slot }
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_answer_is_well_formed() {
        let (head, body) = SHUTTING_DOWN.split_once("\r\n\r\n").unwrap();
        let length: usize = head.split("content-length: ").nth(1).unwrap().parse().unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error_type"], "Unhealthy");
    }
}
