//! `POST /mcp`: the MCP server (`burrow-mcp`) over Streamable HTTP.
//!
//! The tools call the REST API through `burrow_client`, as `burrow mcp` does, over this
//! daemon's own listeners: a call that came in on the unix socket goes out on it, a call that
//! came in on TCP goes out on TCP with the caller's bearer token. So the token middleware
//! decides every tool call exactly as it decides the same REST request: a scoped token reaches
//! its own sandboxes and actions and gets the API's refusal (a tool error) elsewhere. One set of
//! tools and one access check for both transports, at the price of a loopback request per
//! call (well under a millisecond).
//!
//! This module never reaches the manager and never reads a token's caveats itself.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use burrow_client::Client;
use burrow_mcp::{ClientSource, Extensions, HttpService};

use super::{AppState, Transport};

/// Clients kept for reuse (their connection pools), one per token; past this many the cache
/// starts over rather than grow with every token ever seen.
const MAX_CACHED_CLIENTS: usize = 64;

/// The MCP endpoint of one daemon.
pub struct McpEndpoint {
    service: HttpService,
}

impl std::fmt::Debug for McpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpEndpoint").finish_non_exhaustive()
    }
}

impl McpEndpoint {
    /// The endpoint of the daemon serving the API on `socket` and on `tcp` (its bound address).
    pub fn new(socket: PathBuf, tcp: SocketAddr) -> Self {
        let source = DaemonClients {
            unix: Client::unix(socket),
            url: format!("http://{}", loopback(tcp)),
            tcp: Mutex::new(HashMap::new()),
        };
        Self {
            service: burrow_mcp::http_service(Arc::new(source)),
        }
    }
}

/// Where to reach a listener bound to `addr` from this host.
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `POST /mcp` (the route table declares it; the token middleware has already checked that a
/// TCP caller holds a valid token).
pub async fn serve(State(state): State<AppState>, req: Request) -> Response {
    state.mcp.service.handle(req).await.map(Body::new).into_response()
}

/// Clients of this daemon, as the caller of each tool call.
struct DaemonClients {
    unix: Client,
    url: String,
    tcp: Mutex<HashMap<String, Client>>,
}

impl ClientSource for DaemonClients {
    fn client(&self, extensions: &Extensions) -> Result<Client, String> {
        let parts = extensions
            .get::<Parts>()
            .ok_or("the MCP request carries no HTTP request (a bug in burrowd)")?;
        if parts.extensions.get::<Transport>() == Some(&Transport::Unix) {
            return Ok(self.unix.clone());
        }
        let token = super::auth::bearer(&parts.headers)
            .filter(|t| !t.is_empty())
            .ok_or("this request has no bearer token")?;
        let mut cache = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(token) {
            return Ok(c.clone());
        }
        let client = Client::tcp(&self.url, Some(token.to_owned())).map_err(|e| e.to_string())?;
        if cache.len() >= MAX_CACHED_CLIENTS {
            cache.clear();
        }
        cache.insert(token.to_owned(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let l = |s: &str| loopback(s.parse().unwrap()).to_string();
        assert_eq!(l("0.0.0.0:7440"), "127.0.0.1:7440");
        assert_eq!(l("[::]:7440"), "[::1]:7440");
        assert_eq!(l("10.1.2.3:80"), "10.1.2.3:80");
    }
}
