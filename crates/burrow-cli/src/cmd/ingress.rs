//! `burrow url` (a sandbox's web address) and `burrow proxy` (a local port forwarded to a
//! port inside a sandbox, through burrowd; no network route into the sandbox needed).

use std::net::IpAddr;

use anyhow::Context as _;
use burrow_client::{Client, paths};
use clap::Args;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::output::{self, print};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Sandbox name.
    pub name: String,
    /// Listen on LOCAL (default: the same number as REMOTE; 0 picks a free port) and forward
    /// each connection to port REMOTE on the sandbox's loopback address.
    #[arg(value_name = "[LOCAL:]REMOTE", value_parser = parse_forward)]
    pub ports: Forward,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
}

/// `[LOCAL:]REMOTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub local: u16,
    pub remote: u16,
}

fn parse_forward(s: &str) -> Result<Forward, String> {
    let port = |p: &str, what: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{what} port '{p}' is not a number between 0 and 65535"))
    };
    let (local, remote) = match s.split_once(':') {
        Some((l, r)) => (port(l, "local")?, port(r, "remote")?),
        None => {
            let r = port(s, "remote")?;
            (r, r)
        }
    };
    if remote == 0 {
        return Err("the remote port must be between 1 and 65535".into());
    }
    Ok(Forward { local, remote })
}

/// `burrow url NAME`.
pub async fn url(app: &App, name: &str) -> anyhow::Result<u8> {
    let sb = app.get(&paths::sandbox(name)).await?;
    let url = sb["url"]
        .as_str()
        .context("burrowd's answer has no url for the sandbox")?;
    if app.json {
        output::print_json(&json!({ "name": name, "url": url }))?;
    } else {
        print(&format!("{url}\n"))?;
    }
    Ok(0)
}

/// `burrow proxy NAME [LOCAL:]REMOTE`: runs until interrupted.
pub async fn proxy(app: &App, a: ProxyArgs) -> anyhow::Result<u8> {
    // A mistyped name fails now, not at the first connection.
    app.client.get_sandbox(&a.name).await?;
    let listener = TcpListener::bind((a.address, a.ports.local))
        .await
        .with_context(|| format!("cannot listen on {}:{}", a.address, a.ports.local))?;
    let addr = listener.local_addr()?;
    if app.json {
        output::print_json(
            &json!({ "listen": addr.to_string(), "sandbox": a.name, "port": a.ports.remote }),
        )?;
    } else {
        print(&format!(
            "listening on {addr}, forwarding to port {} in sandbox '{}' (Ctrl-C to stop)\n",
            a.ports.remote, a.name
        ))?;
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (sock, peer) = accepted.context("accepting a connection")?;
                let client = app.client.clone();
                let name = a.name.clone();
                tokio::spawn(async move {
                    if let Err(e) = forward(&client, &name, a.ports.remote, sock).await {
                        eprintln!("connection from {peer}: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(0),
        }
    }
}

async fn forward(
    client: &Client,
    name: &str,
    port: u16,
    sock: TcpStream,
) -> Result<(), burrow_client::ClientError> {
    let _ = sock.set_nodelay(true);
    client.proxy_port(name, port).await?.relay(sock).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards() {
        assert_eq!(
            parse_forward("8080"),
            Ok(Forward {
                local: 8080,
                remote: 8080
            })
        );
        assert_eq!(
            parse_forward("0:5432"),
            Ok(Forward {
                local: 0,
                remote: 5432
            })
        );
        assert!(parse_forward("1:0").is_err());
        assert!(parse_forward("x:1").is_err());
        assert!(parse_forward("70000").is_err());
    }
}
