//! `burrow service add|ls|logs|start|stop|rm`.

use std::io::Write;

use burrow_api::{PutService, RestartPolicy, Service, ServiceList};
use burrow_client::{Method, paths};
use futures::StreamExt;

use crate::app::App;
use crate::cli::{RestartArg, ServiceAddArgs, ServiceCommand, ServiceLogsArgs};
use crate::output::{self, print};

fn services_path(name: &str) -> String {
    format!("{}/services", paths::sandbox(name))
}

fn service_path(name: &str, svc: &str) -> String {
    format!("{}/{}", services_path(name), paths::encode(svc))
}

pub async fn run(app: &App, cmd: ServiceCommand) -> anyhow::Result<u8> {
    match cmd {
        ServiceCommand::Add(a) => add(app, a).await,
        ServiceCommand::Ls { name } => ls(app, &name).await,
        ServiceCommand::Logs(a) => logs(app, a).await,
        ServiceCommand::Start { name, svc } => action(app, &name, &svc, "start").await,
        ServiceCommand::Stop { name, svc } => action(app, &name, &svc, "stop").await,
        ServiceCommand::Rm { name, svc } => rm(app, &name, &svc).await,
    }
}

async fn add(app: &App, a: ServiceAddArgs) -> anyhow::Result<u8> {
    let body = PutService {
        cmd: a.cmd,
        env: a.env.into_iter().collect(),
        cwd: a.cwd,
        user: a.user,
        http_port: a.http_port,
        restart: match a.restart {
            RestartArg::Always => RestartPolicy::Always,
            RestartArg::OnFailure => RestartPolicy::OnFailure,
            RestartArg::Never => RestartPolicy::Never,
        },
        needs: a.needs,
    };
    let v = app
        .call(Method::PUT, &service_path(&a.name, &a.svc), Some(&body))
        .await?;
    app.emit(v, |s: Service| {
        print(&format!(
            "{}: service {} is {}\n",
            a.name,
            s.name,
            status_text(&s)
        ))
    })?;
    Ok(0)
}

fn status_text(s: &Service) -> String {
    let status = serde_json::to_value(s.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match (&s.error, s.exit_code) {
        (Some(e), _) => format!("{status} ({e})"),
        (None, Some(c)) if status != "running" => match &s.signal {
            Some(sig) => format!("{status} (signal {sig})"),
            None => format!("{status} (exit {c})"),
        },
        _ => status,
    }
}

async fn ls(app: &App, name: &str) -> anyhow::Result<u8> {
    let v = app.get(&services_path(name)).await?;
    app.emit(v, |l: ServiceList| {
        let rows: Vec<Vec<String>> = l
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    status_text(s),
                    s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.restarts.to_string(),
                    s.started_at
                        .as_deref()
                        .map(output::age)
                        .unwrap_or_else(|| "-".into()),
                    s.restart.as_str().to_owned(),
                    s.http_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.cmd.join(" "),
                ]
            })
            .collect();
        print(&output::table(
            &[
                "NAME", "STATUS", "PID", "RESTARTS", "STARTED", "RESTART", "PORT", "COMMAND",
            ],
            &rows,
        ))
    })?;
    Ok(0)
}

async fn logs(app: &App, a: ServiceLogsArgs) -> anyhow::Result<u8> {
    let mut q = paths::Query::new();
    if a.follow {
        q.push("follow", "true");
    }
    q.push_opt("tail", a.tail.map(|t| t.to_string()));
    let path = q.apply(&format!("{}/logs", service_path(&a.name, &a.svc)));
    let mut stream = app.client.get_stream(&path).await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(0)
}

async fn action(app: &App, name: &str, svc: &str, what: &str) -> anyhow::Result<u8> {
    let path = format!("{}/{what}", service_path(name, svc));
    let v = app.call::<()>(Method::POST, &path, None).await?;
    app.emit(v, |s: Service| {
        print(&format!("{name}: service {} is {}\n", s.name, status_text(&s)))
    })?;
    Ok(0)
}

async fn rm(app: &App, name: &str, svc: &str) -> anyhow::Result<u8> {
    app.call::<()>(Method::DELETE, &service_path(name, svc), None)
        .await?;
    if app.json {
        output::print_json(&serde_json::json!({"deleted": svc}))?;
    }
    Ok(0)
}
