//! What every command gets: the client and the output mode.

use anyhow::Context as _;
use burrow_client::{Client, Method};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::output;

pub struct App {
    pub client: Client,
    /// `--json`: print the server's JSON as is.
    pub json: bool,
}

impl App {
    pub fn from_env(json: bool) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::from_env()?,
            json,
        })
    }

    /// Calls the API and returns its JSON untouched, so `--json` prints exactly what the server
    /// said (including fields this CLI does not know yet).
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Value> {
        Ok(self.client.request_json::<Value, B>(method, path, body).await?)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call::<()>(Method::GET, path, None).await
    }

    /// In `--json` mode prints `v`; otherwise decodes it as `T` and hands it to `human`.
    pub fn emit<T: DeserializeOwned>(
        &self,
        v: Value,
        human: impl FnOnce(T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.json {
            return output::print_json(&v);
        }
        human(decode(v)?)
    }
}

/// Decodes a server answer into a wire type.
pub fn decode<T: DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("unexpected response from burrowd")
}
