//! `POST /mcp` driven with raw JSON-RPC over HTTP (the Python SDK drives it in tests/mcp):
//! a token is needed, tools are listed and called on a real sandbox, and a scoped token's
//! call on another sandbox is a tool error while the same call on its own sandbox works.

use burrow_api::{CreateSandbox, SandboxName};
use burrow_testkit::burrow_client::Method;
use burrow_testkit::{RawResponse, raw_tcp, raw_unix, shared, unique_name};
use serde_json::{Value, json};

async fn mcp(token: Option<&str>, method: &str, params: Value) -> RawResponse {
    let d = shared();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    raw_tcp(d.addr(), "POST", "/mcp", &headers, body.to_string().into_bytes()).await
}

/// A `tools/call`'s result (the JSON-RPC call itself must succeed).
async fn call(token: &str, tool: &str, args: Value) -> Value {
    let r = mcp(
        Some(token),
        "tools/call",
        json!({"name": tool, "arguments": args}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["id"], 7, "{v}");
    v["result"].clone()
}

async fn sandbox() -> String {
    let name = unique_name("mcp");
    shared()
        .tcp_client()
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
    name
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_over_http_lists_and_calls_tools_as_the_token_allows() {
    let d = shared();
    let admin = d.token();
    let (mine, other) = (sandbox().await, sandbox().await);

    // No token, or a bad one: refused before MCP sees the request.
    assert_eq!(mcp(None, "tools/list", json!({})).await.status, 401);
    assert_eq!(mcp(Some("nope"), "tools/list", json!({})).await.status, 401);

    let r = mcp(Some(&admin), "tools/list", json!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut tools: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    tools.sort();
    assert_eq!(tools, burrow_mcp_tool_names());

    let res = call(
        &admin,
        "exec",
        json!({"sandbox": mine, "shell": "echo hi; exit 4"}),
    )
    .await;
    assert_eq!(res["isError"], false, "{res}");
    assert_eq!(res["structuredContent"]["stdout"], "hi\n");
    assert_eq!(res["structuredContent"]["exit_code"], 4);

    // A token for `mine` only.
    let t: Value = d
        .tcp_client()
        .request_json(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"caveats": {"sandboxes": [mine], "actions": ["exec"]}})),
        )
        .await
        .unwrap();
    let scoped = t["token"].as_str().unwrap();
    let res = call(scoped, "exec", json!({"sandbox": mine, "cmd": ["echo", "mine"]})).await;
    assert_eq!(res["isError"], false, "{res}");
    assert_eq!(res["structuredContent"]["stdout"], "mine\n");
    let res = call(
        scoped,
        "exec",
        json!({"sandbox": other, "cmd": ["echo", "theirs"]}),
    )
    .await;
    assert_eq!(res["isError"], true, "{res}");
    let text = res["content"][0]["text"].as_str().unwrap();
    assert!(text.contains(&other) && text.contains("forbidden"), "{text}");
    // Unknown sandbox: the API's message, as a tool error.
    let res = call(&admin, "get_sandbox", json!({"sandbox": "no-such-mcp"})).await;
    assert_eq!(res["isError"], true, "{res}");
    assert!(
        res["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{res}"
    );

    // On the unix socket no token is needed, and the tools act as the root of the API.
    let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                      "params": {"name": "exec", "arguments": {"sandbox": other, "cmd": ["echo", "root"]}}});
    let r = raw_unix(
        &d.socket,
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2025-06-18"),
        ],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let res = &r.json()["result"];
    assert_eq!(res["isError"], false, "{res}");
    assert_eq!(res["structuredContent"]["stdout"], "root\n");

    for n in [mine, other] {
        d.tcp_client().delete_sandbox(&n).await.unwrap();
    }
}

/// The tools the server must list, sorted.
fn burrow_mcp_tool_names() -> Vec<String> {
    let mut names = [
        "list_sandboxes",
        "get_sandbox",
        "create_sandbox",
        "delete_sandbox",
        "exec",
        "exec_poll",
        "exec_kill",
        "read_file",
        "write_file",
        "list_files",
        "checkpoint",
        "list_checkpoints",
        "restore",
        "fork",
        "service_url",
    ]
    .map(str::to_owned)
    .to_vec();
    names.sort();
    names
}
