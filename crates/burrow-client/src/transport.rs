//! Where burrowd is and how to open a byte stream to it (unix socket or plain TCP).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::ClientError;

/// burrowd's default unix socket.
pub const DEFAULT_SOCKET: &str = "/run/burrow/burrowd.sock";

/// The daemon a client talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket; no token (access is by file permissions).
    Unix(PathBuf),
    /// Plain HTTP over TCP with an optional bearer token.
    Tcp {
        /// `host:port`.
        authority: String,
        /// Path prefix the API lives under, without trailing `/` (usually empty).
        base_path: String,
        token: Option<String>,
    },
}

impl Target {
    /// Parses `http://host[:port][/prefix]`. `https` is refused until TLS is supported.
    pub fn tcp(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| ClientError::Config(format!("BURROW_URL '{url}' is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(ClientError::Config(format!(
                    "BURROW_URL '{url}': https is not supported yet; use http:// (e.g. through an SSH tunnel)"
                )));
            }
            _ => {
                return Err(ClientError::Config(format!(
                    "BURROW_URL '{url}' must start with http://, e.g. http://127.0.0.1:7440"
                )));
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::Config(format!("BURROW_URL '{url}' has no host")))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.as_str()),
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let token = token
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_owned());
        Ok(Self::Tcp {
            authority,
            base_path,
            token,
        })
    }

    /// `Authority` for request URIs: the real host for TCP, a placeholder for unix sockets.
    pub(crate) fn authority(&self) -> &str {
        match self {
            Self::Unix(_) => "localhost",
            Self::Tcp { authority, .. } => authority,
        }
    }

    pub(crate) fn base_path(&self) -> &str {
        match self {
            Self::Unix(_) => "",
            Self::Tcp { base_path, .. } => base_path,
        }
    }

    pub(crate) fn token(&self) -> Option<&str> {
        match self {
            Self::Unix(_) => None,
            Self::Tcp { token, .. } => token.as_deref(),
        }
    }

    pub(crate) async fn connect(&self) -> io::Result<Stream> {
        match self {
            Self::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            Self::Tcp { authority, .. } => {
                let s = TcpStream::connect(authority.as_str()).await?;
                // Exec round trips are tiny; Nagle would add tens of ms to each.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix socket {}", p.display()),
            Self::Tcp {
                authority, base_path, ..
            } => write!(f, "http://{authority}{base_path}"),
        }
    }
}

impl fmt::Debug for Target {
    // Hand-written so the token never ends up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
            Self::Tcp {
                authority,
                base_path,
                token,
            } => f
                .debug_struct("Tcp")
                .field("authority", authority)
                .field("base_path", base_path)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// A connected byte stream to burrowd.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Unix(s) => s.is_write_vectored(),
            Self::Tcp(s) => s.is_write_vectored(),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// hyper-util connector that ignores the request URI and dials the client's [`Target`], so one
/// pooled `legacy::Client` serves both transports.
#[derive(Clone)]
pub(crate) struct Connector {
    pub(crate) target: Arc<Target>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move { target.connect().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_urls() {
        let t = Target::tcp("http://127.0.0.1:7440/", Some("tok".into())).unwrap();
        assert_eq!(t.authority(), "127.0.0.1:7440");
        assert_eq!(t.base_path(), "");
        assert_eq!(t.token(), Some("tok"));
        assert_eq!(t.to_string(), "http://127.0.0.1:7440");
        assert!(!format!("{t:?}").contains("tok\""));
        let t = Target::tcp("http://burrow.example/api", Some(" ".into())).unwrap();
        assert_eq!(t.authority(), "burrow.example:80");
        assert_eq!(t.base_path(), "/api");
        assert_eq!(t.token(), None);
        assert!(
            Target::tcp("https://x:1", None)
                .unwrap_err()
                .to_string()
                .contains("https")
        );
        assert!(Target::tcp("127.0.0.1:7440", None).is_err());
    }
}
