//! The server's incoming connections, capped: at most `max` open at once
//! (the rest are closed as they arrive, with a warning at most every few
//! seconds), and a plain-text connection that sends nothing for
//! [`FIRST_BYTES_WITHIN`] is closed, so that idle sockets cannot hold the
//! slots that workers need. (TLS handshakes have their own timeout.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection may stay silent before it is closed.
pub const FIRST_BYTES_WITHIN: Duration = Duration::from_secs(10);

/// How often a full server says so.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// An accepted connection holding one of the cap's slots until dropped.
pub struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    /// Until the first byte arrives: when the connection is closed.
    silent_until: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let Some(deadline) = self.silent_until.as_mut() else {
            return polled;
        };
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.silent_until = None,
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client sent nothing")));
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    refused: u64,
    last_warning: Option<Instant>,
}

impl Acceptor {
    async fn next(&mut self) -> io::Result<Counted> {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(e);
                }
            };
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    // Gradient chunks are latency-bound round trips.
                    let _ = stream.set_nodelay(true);
                    let silent_until = Some(Box::pin(tokio::time::sleep(FIRST_BYTES_WITHIN)));
                    return Ok(Counted { stream, _slot: slot, silent_until });
                }
                Err(_) => {
                    drop(stream);
                    self.refused += 1;
                    if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        self.last_warning = Some(Instant::now());
                        tracing::warn!(
                            %peer,
                            refused = self.refused,
                            "{} connections are open, the cap: closing new ones (raise --max-connections if they are yours)",
                            self.max
                        );
                    }
                }
            }
        }
    }
}

/// The connections `listener` accepts, at most `max` open at once.
pub fn capped(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<Counted>> {
    let acceptor = Acceptor { listener, slots: Arc::new(Semaphore::new(max)), max, refused: 0, last_warning: None };
    futures::stream::unfold(acceptor, |mut a| async move {
        let next = a.next().await;
        Some((next, a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_a_freed_slot_is_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(capped(listener, 2));
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third is accepted and closed at once: its read sees the end.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let accept = tokio::spawn(async move {
            let third = incoming.next().await;
            (third.map(|r| r.is_ok()), incoming)
        });
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("closed at once");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // A slot freed: the next connection is admitted.
        drop(first);
        let mut d = TcpStream::connect(addr).await.unwrap();
        d.write_all(b"x").await.unwrap();
        let (third, _incoming) = accept.await.unwrap();
        assert_eq!(third, Some(true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(capped(listener, 4));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        let e = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // One that talks stays open past the deadline.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        talker.write_all(b"hi").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
        tokio::time::sleep(FIRST_BYTES_WITHIN * 2).await;
        talker.write_all(b"!").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
    }
}
