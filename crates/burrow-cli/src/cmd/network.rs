//! `burrow policy …`, `burrow secret …`, `burrow token …`.

use std::io::Read;

use burrow_api::{
    AttachSecret, CreateSecret, CreateToken, NetworkMode, NetworkPolicy, NetworkRule, RuleAction, Secret,
    SecretInject, SecretList, TokenCaveats, TokenReply,
};
use burrow_client::{Method, paths};
use burrow_macaroon::{Caveat, Macaroon};

use crate::app::App;
use crate::cli::{PolicyCommand, SecretAddArgs, SecretCommand, TokenCommand, TokenScope};
use crate::output::{self, print};

fn policy_path(name: &str) -> String {
    format!("{}/policy/network", paths::sandbox(name))
}

fn print_policy(name: &str, p: &NetworkPolicy) -> anyhow::Result<()> {
    let mut text = format!("{name}: network {}\n", p.mode.as_str());
    for r in &p.rules {
        let action = match r.action {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
        };
        text.push_str(&format!("  {action:5} {}\n", r.domain));
    }
    if p.mode == NetworkMode::Policy && p.rules.is_empty() {
        text.push_str("  (no rules: every name is denied)\n");
    }
    print(&text)
}

pub async fn policy(app: &App, cmd: PolicyCommand) -> anyhow::Result<u8> {
    match cmd {
        PolicyCommand::Show { name } => {
            let v = app.get(&policy_path(&name)).await?;
            app.emit(v, |p: NetworkPolicy| print_policy(&name, &p))?;
        }
        PolicyCommand::Set(a) => {
            // Rules keep the order given on the command line: --allow and --deny interleave,
            // and the first that matches a name decides.
            let rules = a
                .rules_in_order()
                .into_iter()
                .map(|(action, domain)| NetworkRule { domain, action })
                .collect();
            let body = NetworkPolicy {
                mode: a.mode.into(),
                rules,
            };
            let v = app.call(Method::PUT, &policy_path(&a.name), Some(&body)).await?;
            app.emit(v, |p: NetworkPolicy| print_policy(&a.name, &p))?;
        }
    }
    Ok(0)
}

pub async fn secret(app: &App, cmd: SecretCommand) -> anyhow::Result<u8> {
    match cmd {
        SecretCommand::Add(a) => secret_add(app, a).await?,
        SecretCommand::Ls => {
            let v = app.get("/v1/secrets").await?;
            app.emit(v, |l: SecretList| {
                let rows: Vec<Vec<String>> = l
                    .secrets
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.hosts.join(","),
                            format!("{}: {}", s.inject.header, s.inject.format),
                            s.attached
                                .iter()
                                .map(|a| format!("{}({})", a.sandbox, a.env))
                                .collect::<Vec<_>>()
                                .join(","),
                            output::age(&s.created_at),
                        ]
                    })
                    .collect();
                print(&output::table(
                    &["NAME", "HOSTS", "INJECT", "ATTACHED", "CREATED"],
                    &rows,
                ))
            })?;
        }
        SecretCommand::Rm { name } => {
            app.call::<()>(
                Method::DELETE,
                &format!("/v1/secrets/{}", paths::encode(&name)),
                None,
            )
            .await?;
            if !app.json {
                print(&format!("secret {name} deleted\n"))?;
            }
        }
        SecretCommand::Attach { sandbox, secret, env } => {
            let path = format!("{}/secrets/{}", paths::sandbox(&sandbox), paths::encode(&secret));
            let v = app
                .call(Method::PUT, &path, Some(&AttachSecret { env: env.clone() }))
                .await?;
            app.emit(v, |_: Secret| {
                print(&format!(
                    "{sandbox}: ${env} now holds a placeholder for secret {secret} (new processes see it)\n"
                ))
            })?;
        }
        SecretCommand::Detach { sandbox, secret } => {
            let path = format!("{}/secrets/{}", paths::sandbox(&sandbox), paths::encode(&secret));
            app.call::<()>(Method::DELETE, &path, None).await?;
            if !app.json {
                print(&format!("{sandbox}: secret {secret} detached\n"))?;
            }
        }
    }
    Ok(0)
}

async fn secret_add(app: &App, a: SecretAddArgs) -> anyhow::Result<()> {
    let value = match (&a.value_file, a.value_stdin) {
        (Some(path), false) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        _ => anyhow::bail!(
            "give the value with --value-file FILE or --value-stdin (never on the command line)"
        ),
    };
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    let mut inject = SecretInject::default();
    if let Some(h) = a.header {
        inject.header = h;
    }
    if let Some(f) = a.format {
        inject.format = f;
    }
    let body = CreateSecret {
        name: a.name.clone(),
        value,
        inject,
        hosts: a.hosts,
    };
    let v = app.call(Method::POST, "/v1/secrets", Some(&body)).await?;
    app.emit(v, |s: Secret| {
        print(&format!(
            "secret {} sealed; it will be sent as '{}: {}' to {} only\n",
            s.name,
            s.inject.header,
            s.inject.format,
            s.hosts.join(", ")
        ))
    })
}

/// `--expires 1h` etc. → seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("'{s}' is not a duration (e.g. 90s, 10m, 1h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => anyhow::bail!("'{s}' is not a duration (e.g. 90s, 10m, 1h, 7d)"),
    };
    Ok(n * mult)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn scope_caveats(s: &TokenScope) -> anyhow::Result<Vec<Caveat>> {
    let mut out = Vec::new();
    if !s.sandbox.is_empty() {
        out.push(Caveat::Sandboxes(s.sandbox.clone()));
    }
    if let Some(a) = &s.actions {
        out.push(Caveat::Actions(a.split(',').map(str::to_owned).collect()));
    }
    if let Some(e) = &s.expires {
        out.push(Caveat::ExpiresAt(now() + parse_duration(e)?));
    }
    Ok(out)
}

fn print_token(json: bool, token: &str, caveats: &[String]) -> anyhow::Result<()> {
    if json {
        return output::print_json(&serde_json::json!({"token": token, "caveats": caveats}));
    }
    print(&format!("{token}\n"))
}

pub async fn token(app: &App, cmd: TokenCommand) -> anyhow::Result<u8> {
    match cmd {
        TokenCommand::Create(scope) => {
            let mut caveats = TokenCaveats::default();
            if !scope.sandbox.is_empty() {
                caveats.sandboxes = Some(scope.sandbox.clone());
            }
            caveats.actions = scope
                .actions
                .as_ref()
                .map(|a| a.split(',').map(str::to_owned).collect());
            if let Some(e) = &scope.expires {
                let at = time::OffsetDateTime::from_unix_timestamp(now() + parse_duration(e)?)?;
                caveats.expires_at = Some(at.format(&time::format_description::well_known::Rfc3339)?);
            }
            let v = app
                .call(Method::POST, "/v1/tokens", Some(&CreateToken { caveats }))
                .await?;
            let reply: TokenReply = crate::app::decode(v)?;
            print_token(app.json, &reply.token, &reply.caveats)?;
        }
        TokenCommand::Attenuate { token, scope } => {
            // Offline: appending a caveat needs only the token itself.
            let mac = Macaroon::decode(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mac = scope_caveats(&scope)?.iter().fold(mac, |m, c| m.attenuate(c));
            print_token(app.json, &mac.encode(), mac.caveat_texts())?;
        }
        TokenCommand::Inspect { token } => {
            let mac = Macaroon::decode(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
            if app.json {
                output::print_json(&serde_json::json!({"id": mac.id(), "caveats": mac.caveat_texts()}))?;
            } else {
                let mut text = format!("id {}\n", mac.id());
                if mac.caveat_texts().is_empty() {
                    text.push_str("no caveats: full access\n");
                }
                for c in mac.caveat_texts() {
                    text.push_str(&format!("  {c}\n"));
                }
                print(&text)?;
            }
        }
    }
    Ok(0)
}
