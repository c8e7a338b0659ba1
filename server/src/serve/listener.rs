//! A TCP listener that holds at most `server.max_connections` connections open. Each one
//! costs buffers whatever it sends, so without a cap a flood of connections would grow
//! memory without bound; at the cap, new connections wait in the kernel's accept backlog
//! until one closes. Requests on accepted connections are bounded separately (admission).
//!
//! On shutdown it drains that backlog before the listener closes: a connection the kernel
//! has accepted (handshake done, request perhaps sent) but the server has not yet taken would
//! otherwise be reset when the socket closes. Once the backlog is empty it says so, and the
//! server stops accepting; only a connection completing its handshake in that instant can
//! still be reset, which is why a balancer should stop sending before SIGTERM.

use axum::serve::Listener;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

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

    /// A connection already in the backlog, without waiting; `None` when there is none.
    async fn try_accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let inner = &self.inner;
        std::future::poll_fn(|cx| {
            Poll::Ready(match inner.poll_accept(cx) {
                Poll::Ready(Ok(conn)) => Some(conn),
                // Out of descriptors, say: nothing more can be taken now.
                Poll::Ready(Err(_)) | Poll::Pending => None,
            })
        })
        .await
    }
}

impl Listener for CappedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            if *self.draining.borrow() {
                // Past the cap: the backlog is bounded, and these were already accepted.
                if let Some((io, addr)) = self.try_accept().await {
                    return (Connection::new(io, None), addr);
                }
                if let Some(drained) = self.drained.take() {
                    let _ = drained.send(());
                }
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
                        (io, addr) = Listener::accept(inner) => return (Connection::new(io, Some(slot)), addr),
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

/// An accepted connection; its slot (if it took one) frees when it closes.
pub struct Connection {
    io: TcpStream,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection {
    fn new(io: TcpStream, slot: Option<OwnedSemaphorePermit>) -> Connection {
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
