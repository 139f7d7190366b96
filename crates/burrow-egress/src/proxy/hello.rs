//! Reading a TLS ClientHello without consuming it: the bytes are kept so the connection can
//! still be relayed untouched or handed to a TLS acceptor ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The first byte of a TLS handshake record.
pub(super) const HANDSHAKE: u8 = 0x16;

/// The largest ClientHello accepted (post-quantum key shares make them a few KiB).
const MAX_HELLO: usize = 32 * 1024;

pub(super) struct ClientHello {
    /// Every byte read from the client so far.
    pub bytes: Vec<u8>,
    /// The server name it asked for, lowercased.
    pub sni: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum HelloError {
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
    /// With the bytes read so far, for relaying them anyway.
    #[error("the client did not start a TLS handshake")]
    NotTls(Vec<u8>),
    #[error("the client closed the connection before its ClientHello")]
    Closed,
    #[error("the ClientHello does not parse: {0}")]
    Malformed(rustls::Error),
    #[error("the ClientHello is larger than {MAX_HELLO} bytes")]
    TooLarge,
}

/// Reads until a whole ClientHello is in; `bytes` are what was read already (may be empty).
/// rustls does the parsing.
pub(super) async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    mut bytes: Vec<u8>,
) -> Result<ClientHello, HelloError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = 0;
    let mut chunk = vec![0u8; 4096];
    loop {
        if bytes.first().is_some_and(|b| *b != HANDSHAKE) {
            return Err(HelloError::NotTls(bytes));
        }
        while fed < bytes.len() {
            let mut rd = &bytes[fed..];
            let n = acceptor.read_tls(&mut rd)?;
            if n == 0 {
                break;
            }
            fed += n;
        }
        if fed > 0 {
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted.client_hello().server_name().map(str::to_ascii_lowercase);
                    return Ok(ClientHello { bytes, sni });
                }
                Ok(None) => {}
                Err((e, _alert)) => return Err(HelloError::Malformed(e)),
            }
        }
        if bytes.len() >= MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A stream that first yields bytes already read from it.
pub(super) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a rustls client sends first for `name`.
    fn hello_for(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_sni_across_small_reads_and_keeps_the_bytes() {
        let hello = hello_for("API.Example.com");
        let (mut client, mut server) = tokio::io::duplex(7);
        let sent = hello.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&sent).await.unwrap();
            client.write_all(b"more").await.unwrap();
        });
        let got = read_client_hello(&mut server, Vec::new()).await.unwrap();
        assert_eq!(got.sni.as_deref(), Some("api.example.com"));
        assert!(got.bytes.starts_with(&hello));
        let mut stream = Prefixed::new(got.bytes, server);
        let mut all = vec![0u8; hello.len() + 4];
        stream.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..hello.len()], &hello[..]);
        assert_eq!(&all[hello.len()..], b"more");
    }

    #[tokio::test]
    async fn refuses_what_is_not_tls() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read_client_hello(&mut input, Vec::new()).await,
            Err(HelloError::NotTls(_))
        ));
        let mut cut: &[u8] = &hello_for("a.test")[..20];
        assert!(matches!(
            read_client_hello(&mut cut, Vec::new()).await,
            Err(HelloError::Closed)
        ));
    }
}
