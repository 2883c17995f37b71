//! The accepted socket as the WebSocket layer sees it.
//!
//! A session's task wakes for every event it sends, and each wake polls the
//! WebSocket for input too. `Async<TcpStream>` answers that poll with a
//! `recv(2)` that nearly always fails with EAGAIN: two or three wasted
//! syscalls per delivered event (10 % of the server's CPU in the profile at
//! 1,000 clients). [`Socket`] reads only after the reactor reported the socket
//! readable, and otherwise just re-registers the waker.
//!
//! With `[tls]`, [`Socket`] is the rustls stream over that same reader.

use std::io::{self, Read};
use std::net::TcpStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_tungstenite::WebSocketStream;
use edgepush_client::stream::MaybeTls;
use smol::io::{AsyncRead, AsyncWrite};
use smol::Async;

/// The WebSocket over an accepted socket.
pub type Ws = WebSocketStream<Socket>;

/// An accepted connection: plain, or TLS over the same reader.
pub(crate) type Socket = MaybeTls<Raw, futures_rustls::server::TlsStream<Raw>>;

/// The TCP socket, read only after the reactor reported input.
pub struct Raw {
    io: Async<TcpStream>,
    /// False once a read found nothing, until the reactor reports input.
    readable: bool,
}

impl Raw {
    pub fn new(io: Async<TcpStream>) -> Raw {
        Raw { io, readable: true }
    }
}

impl AsyncRead for Raw {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.readable {
                ready!(this.io.poll_readable(cx))?;
                this.readable = true;
            }
            match this.io.get_ref().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.readable = false,
                // A short read took all the socket had: the next read would
                // find nothing (a wasted `recv(2)` per pong), so it waits
                // for the reactor instead, which reports input that came since.
                Ok(n) if n > 0 && n < buf.len() => {
                    this.readable = false;
                    return Poll::Ready(Ok(n));
                }
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for Raw {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Flushes and half-closes: async-io's close of a TCP stream only
    /// flushes, so the peer would not see the end of what was sent (and
    /// [`linger`] would hold a connection for its whole grace).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_close(cx))?;
        match this.io.get_ref().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// Closes gracefully after the last bytes this side sends (an HTTP answer,
/// a close frame): half-close, then read and discard what the peer still
/// sends, until it closes too, `max_bytes` were discarded, or the caller's
/// deadline ends this future. Closing a socket with unread input makes the
/// kernel answer with a reset, and a reset can destroy what was sent before
/// it is read (RFC 6455 §7.1.1 asks servers to close this way).
pub(crate) async fn linger(stream: &mut (impl AsyncRead + AsyncWrite + Unpin), max_bytes: usize) {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    // Flushes, then half-closes (after TLS's close_notify).
    let _ = stream.close().await;
    // On the heap: an array here would live in every session's future, idle
    // or not (4 KiB per connection, measured), since sessions await this.
    let mut sink = vec![0u8; 4096];
    let mut total = 0;
    while total < max_bytes {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smol::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_what_arrives_after_finding_nothing() {
        smol::block_on(async {
            let l = Async::<std::net::TcpListener>::bind(([127, 0, 0, 1], 0)).unwrap();
            let mut peer = Async::<TcpStream>::connect(l.get_ref().local_addr().unwrap()).await.unwrap();
            let mut s = Raw::new(l.accept().await.unwrap().0);
            let mut buf = [0u8; 8];
            // Nothing yet: pending, and the next read waits for the reactor.
            let nothing = smol::future::poll_once(s.read(&mut buf)).await;
            assert!(nothing.is_none());
            assert!(!s.readable);
            peer.write_all(b"hi").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 2);
            assert!(!s.readable, "a short read drained the socket: the next waits for the reactor");
            // What arrives after that short read is still read.
            peer.write_all(b"more").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 4);
            // A full buffer may leave more behind: read again at once.
            peer.write_all(b"0123456789").await.unwrap();
            smol::Timer::after(std::time::Duration::from_millis(50)).await;
            assert_eq!(s.read(&mut buf).await.unwrap(), 8);
            assert!(s.readable);
            assert_eq!(s.read(&mut buf).await.unwrap(), 2);
            s.write_all(b"back").await.unwrap();
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"back");
            drop(peer);
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "end of stream");
        });
    }
}
