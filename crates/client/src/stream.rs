//! The client's socket: plain for `ws://`, rustls for `wss://`; and the
//! plain-or-TLS stream the server's accepted sockets use too.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_rustls::rustls::pki_types::pem::PemObject;
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use smol::io::{AsyncRead, AsyncWrite};
use smol::Async;

/// A connection to the server: plain for `ws://`, rustls for `wss://`.
pub type ClientStream = MaybeTls<Async<TcpStream>, futures_rustls::client::TlsStream<Async<TcpStream>>>;

/// A byte stream that is plain or TLS over the same kind of socket: the
/// client's connection here, and the server's accepted socket. Reads and
/// writes go to whichever it is.
pub enum MaybeTls<P, T> {
    /// No TLS.
    Plain(P),
    /// Boxed: rustls' state is large and only TLS connections carry it.
    Tls(Box<T>),
}

/// A TLS client config trusting the certificates in a PEM file: the server's
/// own (self-signed) certificate, or the CA that signed it.
///
/// # Errors
/// The file cannot be read or holds no certificate.
pub fn trusting(pem: &Path) -> Result<Arc<ClientConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem)
        .and_then(|c| c.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", pem.display()))?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", pem.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", pem.display()));
    }
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens the client's side of a connection over a socket the caller
/// connected: sets `TCP_NODELAY`, then runs the TLS handshake when `tls` is
/// given, checking the certificate against the host in `authority` (a URL's
/// `host[:port]`), or stays plain.
///
/// # Errors
/// `InvalidInput` when the host is not a name or address a certificate can
/// hold; the handshake's own error otherwise.
pub async fn open(
    stream: Async<TcpStream>,
    authority: &str,
    tls: Option<&Arc<ClientConfig>>,
) -> io::Result<ClientStream> {
    let _ = stream.get_ref().set_nodelay(true);
    let Some(config) = tls else {
        return Ok(MaybeTls::Plain(stream));
    };
    let host = edgepush_protocol::authority::bare_host(authority).to_owned();
    let name = ServerName::try_from(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let s = futures_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?;
    Ok(MaybeTls::Tls(Box::new(s)))
}

/// Forwards a call to whichever stream it is.
macro_rules! either {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl<P: AsyncRead + Unpin, T: AsyncRead + Unpin> AsyncRead for MaybeTls<P, T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_read(cx, buf))
    }
}

impl<P: AsyncWrite + Unpin, T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<P, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => s.poll_close(cx))
    }
}
