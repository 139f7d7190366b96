//! Pre-started sandboxes (`burrowd --prestart N`): a create takes one that already runs and
//! it becomes exactly what was asked for (name, hostname, limits, env, labels), hidden until
//! then; the pool refills, follows images as they change and go, and a restarted daemon
//! starts it afresh. Whether a create was served from the pool is read from the daemon's
//! log ("created (pre-started)"), and each check has its control: a create the pool cannot
//! serve goes the usual way and says so. Demand grows a pool (`--prestart-max`).

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, EngineKind, ExecRequest, PrestartInfo, SandboxName};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::fixtures::{create_req, fork_req};
use burrow_testkit::page_cache::{cold_file, resident_pages};
use burrow_testkit::{Daemon, raw_unix, unique_name};

async fn sh(c: &Client, name: &str, script: &str) -> String {
    let r = c
        .exec(
            name,
            &ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    r.stdout.trim().to_owned()
}

async fn prestart(c: &Client) -> PrestartInfo {
    c.version().await.unwrap().prestart.expect("the pool is on")
}

/// Waits (bounded) until the pool says `ok`.
async fn wait_pool(c: &Client, what: &str, ok: impl Fn(&PrestartInfo) -> bool) -> PrestartInfo {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = prestart(c).await;
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "the pool never got to {what}: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_pool(p: &PrestartInfo, image: &str) -> bool {
    p.pools.iter().any(|x| x.image == image)
}

/// The daemon's log without its colour codes.
fn log(d: &Daemon) -> String {
    let text = d.log_text();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Whether the daemon's log says `name` was created from the pool.
fn from_pool(d: &Daemon, name: &str) -> bool {
    log(d)
        .lines()
        .any(|l| l.contains("created (pre-started)") && l.contains(&format!("sandbox={name} ")))
}

/// Names of the pool's sandboxes, from the daemon's log.
fn pooled_names(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = log(d)
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("prestarted-"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Containers runc knows under this daemon's runc root.
fn runc_containers(d: &Daemon) -> usize {
    std::fs::read_dir(d.data_dir.join("runc")).map_or(0, |r| r.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_takes_a_prestarted_sandbox_and_becomes_what_was_asked() {
    let d = Daemon::start_with(&["--prestart", "2"]);
    let c = d.client();
    let p = wait_pool(&c, "two ready", |p| p.ready == 2).await;
    assert_eq!(p.pools.len(), 1, "{p:?}");
    assert_eq!(
        (p.pools[0].engine, p.pools[0].image.as_str(), p.pools[0].target),
        (EngineKind::Container, "base", 2)
    );
    // Hidden: not listed, not reachable by name (the control: the pool's names are real).
    let hidden = pooled_names(&d);
    assert_eq!(hidden.len(), 2, "{hidden:?}");
    assert!(c.list_all_sandboxes(None, &[]).await.unwrap().is_empty());
    for n in &hidden {
        assert_eq!(
            raw_unix(&d.socket, "GET", &format!("/v1/sandboxes/{n}"), &[], vec![])
                .await
                .status,
            404
        );
    }
    assert_eq!(runc_containers(&d), 2, "the two pool containers run");

    let name = unique_name("job");
    let sb = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            memory_mb: Some(512),
            cpus: Some(0.5),
            disk_gb: Some(3),
            idle_timeout_s: Some(300),
            env: [("GREETING".to_owned(), "hi".to_owned())].into(),
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(from_pool(&d, &name), "the create was served from the pool");
    assert_eq!(sb.name, name);
    assert_eq!(sb.config.memory_mb, 512);
    assert_eq!(sb.config.idle_timeout_s, 300);
    assert_eq!(sb.labels.get("team").map(String::as_str), Some("a"));

    // Its identity inside: hostname (kernel, /etc/hostname, /etc/hosts, $HOSTNAME), env,
    // memory and cpu limits as lxcfs and the cgroup show them.
    let seen = sh(
        &c,
        &name,
        "hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; echo $HOSTNAME; echo $GREETING; \
         awk '/MemTotal/ {print $2}' /proc/meminfo; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    )
    .await;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines,
        [&name, &name, "2", &name, "hi", "524288", "50000"],
        "{seen}"
    );
    // The listing shows it like any other; the pool is back to two.
    let listed = c.list_all_sandboxes(None, &[]).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        [name.as_str()]
    );
    wait_pool(&c, "refilled", |p| p.ready == 2).await;

    // The control: a create the pool cannot serve (a pids limit of its own) boots as usual.
    let other = unique_name("own-pids");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&other).unwrap(),
        pids: Some(256),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !from_pool(&d, &other),
        "a pids limit of its own is not served from the pool"
    );
    assert_eq!(sh(&c, &other, "hostname").await, other);

    // Its own name taken meanwhile: a second create of the same name is refused either way.
    let again = raw_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        &[("content-type", "application/json")],
        format!(r#"{{"name":"{name}"}}"#).into_bytes(),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.error_message());

    // The daemon's own label is not for users (the control: any other label is).
    let reserved = raw_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        &[("content-type", "application/json")],
        br#"{"name":"sneaky","labels":{"burrow.internal":"prestart"}}"#.to_vec(),
    )
    .await;
    assert_eq!(reserved.status, 422, "{}", reserved.error_message());
    assert!(
        reserved.error_message().contains("reserved"),
        "{}",
        reserved.error_message()
    );
    let fine = raw_unix(
        &d.socket,
        "POST",
        "/v1/sandboxes",
        &[("content-type", "application/json")],
        br#"{"name":"labelled","labels":{"burrow.team":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(fine.status, 201, "{}", fine.error_message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_follows_images_and_a_restart() {
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    wait_pool(&c, "base ready", |p| p.ready == 1).await;

    // An image joins the pool on its first create (served the usual way).
    let src = unique_name("src");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&src).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    sh(&c, &src, "echo v1 > /etc/flavour").await;
    let made = raw_unix(
        &d.socket,
        "POST",
        "/v1/images",
        &[("content-type", "application/json")],
        format!(r#"{{"name":"tpl","from":{{"sandbox":"{src}"}}}}"#).into_bytes(),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.error_message());
    let first = unique_name("tpl-a");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&first).unwrap(),
        image: Some("tpl".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!from_pool(&d, &first), "the image's first create boots");
    wait_pool(&c, "tpl kept ready", |p| has_pool(p, "tpl") && p.ready == 2).await;
    let second = unique_name("tpl-b");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&second).unwrap(),
        image: Some("tpl".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        from_pool(&d, &second),
        "the image's next create comes from the pool"
    );
    assert_eq!(sh(&c, &second, "cat /etc/flavour").await, "v1");

    // The image deleted: its pre-started sandbox goes with it, it is not "in use".
    wait_pool(&c, "tpl refilled", |p| p.ready == 2).await;
    for n in [&first, &second] {
        c.delete_sandbox(n).await.unwrap();
    }
    let gone = raw_unix(&d.socket, "DELETE", "/v1/images/tpl", &[], vec![]).await;
    assert_eq!(gone.status, 204, "{}", gone.error_message());
    let p = wait_pool(&c, "tpl gone", |p| !has_pool(p, "tpl")).await;
    assert_eq!(p.ready, 1, "only base's is left: {p:?}");

    // kill -9: the pool's sandboxes are discarded at start and new ones made; none is ever
    // listed, and nothing of the old ones runs.
    let before = pooled_names(&d);
    d.kill9();
    d.restart();
    wait_pool(&c, "base ready after the restart", |p| p.ready == 1).await;
    let listed: Vec<String> = c
        .list_all_sandboxes(None, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        listed,
        std::slice::from_ref(&src),
        "only the user's sandbox is listed"
    );
    assert_eq!(
        runc_containers(&d),
        2,
        "src and one new pool container run: {before:?}"
    );
    let after = unique_name("after");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&after).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(from_pool(&d, &after));
    assert_eq!(sh(&c, &after, "hostname").await, after);
}

/// Creates `names` at once; returns how many the pool served.
async fn burst(d: &Daemon, c: &Client, names: &[String]) -> usize {
    let creates = names.iter().map(|n| {
        let req = CreateSandbox {
            name: SandboxName::parse(n).unwrap(),
            ..Default::default()
        };
        async move { c.create_sandbox(&req).await }
    });
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    names.iter().filter(|n| from_pool(d, n)).count()
}

/// `--prestart-max`: creates that find the pool empty grow it, so the next burst of the same
/// size is served from the pool. The control: before the burst, the pool holds its base size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_grows_the_pool_so_the_next_burst_is_served_from_it() {
    let d = Daemon::start_with(&["--prestart", "1", "--prestart-max", "3"]);
    let c = d.client();
    let p = wait_pool(&c, "one ready", |p| p.ready == 1).await;
    assert_eq!(p.pools[0].target, 1, "the base size before any demand: {p:?}");

    // Three at once against a pool of one: the ones it cannot serve boot, and each of those
    // grows it by one. (A refill that lands mid-burst serves one more, and grows it less.)
    let first: Vec<String> = (0..3).map(|_| unique_name("burst")).collect();
    let served = burst(&d, &c, &first).await;
    let grown = (1 + (first.len() - served)).min(3) as u32;
    assert!(
        grown >= 2,
        "three creates at once against a pool of one: {served} served from it"
    );
    let p = prestart(&c).await;
    assert_eq!(p.pools[0].target, grown, "{p:?}");
    let p = wait_pool(&c, "the grown pool ready", |p| p.ready == grown).await;
    assert_eq!(p.pools[0].target, grown);
    // What `burrow version` shows a user.
    let o = burrow_testkit::cli::run_on(&d, &["version"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let want = format!("Pre-started:    container/base {grown} of {grown} ready");
    assert!(
        o.status.success() && out.contains(&want),
        "{want:?} not in: {out}"
    );

    // The same burst again: every create from the pool.
    let second: Vec<String> = (0..grown).map(|_| unique_name("again")).collect();
    assert_eq!(
        burst(&d, &c, &second).await,
        second.len(),
        "all served from the grown pool"
    );
    for n in &second {
        assert_eq!(sh(&c, n, "hostname").await, *n);
    }
    // It never grows past its maximum.
    let third: Vec<String> = (0..4).map(|_| unique_name("more")).collect();
    burst(&d, &c, &third).await;
    assert_eq!(prestart(&c).await.pools[0].target, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_create_takes_one_loses_nothing() {
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    d.set_env(&[("BURROW_FAULT", "prestart.before_claim")]);
    d.kill9();
    d.restart();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let name = unique_name("crash");
    let req = CreateSandbox {
        name: SandboxName::parse(&name).unwrap(),
        ..Default::default()
    };
    assert!(
        c.create_sandbox(&req).await.is_err(),
        "the daemon died mid-create"
    );
    assert!(
        d.wait_exit().is_some_and(|s| !s.success()),
        "it aborted at the fault point"
    );
    assert!(d.log_text().contains("aborting at prestart.before_claim"));

    // Restarted: the half-given sandbox is gone (it had the new hostname already), the name
    // is free, and the same create succeeds from a new pool sandbox.
    d.set_env(&[]);
    d.restart();
    wait_pool(&c, "one ready after the restart", |p| p.ready == 1).await;
    assert!(c.list_all_sandboxes(None, &[]).await.unwrap().is_empty());
    assert_eq!(runc_containers(&d), 1, "only the new pool container runs");
    c.create_sandbox(&req).await.unwrap();
    assert!(from_pool(&d, &name));
    assert_eq!(sh(&c, &name, "hostname").await, name);
}

/// A daemon keeping one pre-started sandbox, and a fork source made there whose
/// `/root/state` says `state`.
async fn pool_and_source(state: &str) -> (Daemon, Client, String) {
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    let src = unique_name("src");
    c.create_sandbox(&create_req(&src)).await.unwrap();
    sh(&c, &src, &format!("echo {state} > /root/state")).await;
    (d, c, src)
}

/// Volumes in the pool's sandbox directory whose names are not a sandbox id: what a swap of
/// volumes left behind. A replaced volume renamed aside (`<id>.trash-<hex>`) is deleted in
/// the background: it may take a moment (bounded) to go.
async fn stray_volumes(d: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stray: Vec<String> = std::fs::read_dir(d.data_dir.join("pool/sandboxes"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains('.'))
            .collect();
        if stray.iter().all(|n| !n.contains(".trash-")) || Instant::now() > deadline {
            return stray;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fork of a container takes a pre-started sandbox too: its source's disk (live state or
/// checkpoint) goes under it as its root, and it is the fork in every way a booted one is.
/// The control: a fork the pool cannot serve (a pids limit of its own) boots as usual and
/// sees the same disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_takes_a_prestarted_sandbox_and_runs_on_its_sources_disk() {
    let (d, c, src) = pool_and_source("checkpointed").await;
    let cp: serde_json::Value = c
        .request_json(
            burrow_testkit::burrow_client::Method::POST,
            &format!("/v1/sandboxes/{src}/checkpoints"),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    let v0 = cp["id"].as_str().unwrap().to_owned();
    sh(&c, &src, "echo live > /root/state").await;

    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let fork = unique_name("fork");
    let sb = c
        .create_sandbox(&CreateSandbox {
            disk_gb: Some(3),
            ..fork_req(&fork, &src, None)
        })
        .await
        .unwrap();
    assert!(from_pool(&d, &fork), "the fork was served from the pool");
    // Its own disk limit, on its new volume (the control: the source has the default).
    let volume = |id: &str| d.data_dir.join("pool/sandboxes").join(id);
    assert_eq!(
        burrow_testkit::fixtures::volume_limit(&volume(&sb.id)),
        Some(3 << 30)
    );
    let src_id = c.get_sandbox(&src).await.unwrap().id;
    let default = burrow_testkit::fixtures::volume_limit(&volume(&src_id));
    assert!(default.is_some_and(|b| b != 3 << 30), "{default:?}");
    assert_eq!(sb.parent.as_ref().map(|p| p.sandbox.as_str()), Some(src.as_str()));
    let seen = sh(
        &c,
        &fork,
        "cat /root/state; hostname; cat /etc/hostname; echo $HOSTNAME; grep -c \"$(hostname)\" /etc/hosts",
    )
    .await;
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["live", &fork, &fork, &fork, "2"],
        "{seen}"
    );
    // A copy: what one writes the other does not see.
    sh(&c, &fork, "echo forked > /root/state").await;
    assert_eq!(sh(&c, &src, "cat /root/state").await, "live");
    assert_eq!(
        c.get_sandbox(&fork).await.unwrap().image,
        c.get_sandbox(&src).await.unwrap().image
    );

    // From a checkpoint, once the pool has refilled.
    wait_pool(&c, "refilled", |p| p.ready >= 1).await;
    let from_cp = unique_name("fork-cp");
    c.create_sandbox(&fork_req(&from_cp, &src, Some(&v0)))
        .await
        .unwrap();
    assert!(
        from_pool(&d, &from_cp),
        "the checkpoint fork was served from the pool"
    );
    assert_eq!(sh(&c, &from_cp, "cat /root/state").await, "checkpointed");

    // The control.
    let own = unique_name("fork-own");
    c.create_sandbox(&CreateSandbox {
        pids: Some(256),
        ..fork_req(&own, &src, None)
    })
    .await
    .unwrap();
    assert!(
        !from_pool(&d, &own),
        "a pids limit of its own is not served from the pool"
    );
    assert_eq!(
        sh(&c, &own, "cat /root/state; hostname").await,
        format!("live\n{own}")
    );
    // A checkpoint that does not exist is refused as always, pool or not.
    let e = c
        .create_sandbox(&fork_req(&unique_name("nope"), &src, Some("v9")))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let stray = stray_volumes(&d).await;
    assert!(stray.is_empty(), "{stray:?}");
}

/// A daemon killed while a fork takes a pre-started sandbox leaves no fork, no stray volume,
/// and the source as it was; the same fork then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_fork_takes_one_loses_nothing() {
    let (d, c, src) = pool_and_source("mine").await;
    d.set_env(&[("BURROW_FAULT", "prestart.fork_snapshot")]);
    d.kill9();
    d.restart();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let fork = unique_name("fork");
    assert!(
        c.create_sandbox(&fork_req(&fork, &src, None)).await.is_err(),
        "the daemon died mid-fork"
    );
    assert!(
        d.wait_exit().is_some_and(|s| !s.success()),
        "it aborted at the fault point"
    );
    assert!(d.log_text().contains("aborting at prestart.fork_snapshot"));

    d.set_env(&[]);
    d.restart();
    wait_pool(&c, "one ready after the restart", |p| p.ready == 1).await;
    assert_eq!(c.get_sandbox(&fork).await.unwrap_err().status(), Some(404));
    let stray = stray_volumes(&d).await;
    assert!(stray.is_empty(), "{stray:?}");
    assert_eq!(sh(&c, &src, "cat /root/state").await, "mine");
    c.create_sandbox(&fork_req(&fork, &src, None)).await.unwrap();
    assert!(from_pool(&d, &fork));
    assert_eq!(
        sh(&c, &fork, "cat /root/state; hostname").await,
        format!("mine\n{fork}")
    );
}

/// Replaced volumes renamed aside and not deleted yet (`<id>.trash-<hex>`).
fn trash_volumes(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.data_dir.join("pool/sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".trash-"))
        .collect()
}

/// The `ro` property of btrfs subvolume `path`.
fn read_only(path: &std::path::Path) -> bool {
    let out = std::process::Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(path)
        .arg("ro")
        .output()
        .expect("btrfs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && text.starts_with("ro="), "{text}");
    text == "ro=true"
}

/// The background work a fork and a restore leave behind (the replaced volume's delete, the
/// pool's refill, the backup's read-only flag and size) waits for the sandbox's first
/// command, which is what the user waits for on two cores. With that wait made long
/// (`BURROW_TEST_FIRST_USE_WAIT_MS`), none of it has happened when the fork or the restore
/// answers; a command in the sandbox lets it go (the control: the same probes see it done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_work_of_a_fork_or_a_restore_waits_for_its_first_command() {
    let (d, c, src) = pool_and_source("mine").await;
    d.set_env(&[("BURROW_TEST_FIRST_USE_WAIT_MS", "600000")]);
    d.kill9();
    d.restart();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;

    let fork = unique_name("fork");
    c.create_sandbox(&fork_req(&fork, &src, None)).await.unwrap();
    assert!(from_pool(&d, &fork));
    assert_eq!(trash_volumes(&d).len(), 1, "the replaced volume waits");
    assert_eq!(prestart(&c).await.ready, 0, "the pool waits");
    let text = log(&d);
    let taken = text
        .find(&format!("created (pre-started) sandbox={fork} "))
        .unwrap();
    assert!(
        !text[taken..].contains("sandbox=prestarted-"),
        "no refill started before the fork's first command"
    );
    assert_eq!(sh(&c, &fork, "cat /root/state").await, "mine");
    wait_pool(&c, "refilled after the first command", |p| p.ready == 1).await;
    let stray = stray_volumes(&d).await;
    assert!(stray.is_empty(), "the replaced volume went: {stray:?}");

    let id = c.get_sandbox(&src).await.unwrap().id;
    let v: serde_json::Value = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{src}/checkpoints"),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    let cp = v["id"].as_str().unwrap().to_owned();
    sh(&c, &src, "echo changed > /root/state").await;
    let r: serde_json::Value = c
        .request_json::<serde_json::Value, ()>(
            Method::POST,
            &format!("/v1/sandboxes/{src}/checkpoints/{cp}/restore"),
            None,
        )
        .await
        .unwrap();
    let backup = r["backup"].as_str().unwrap().to_owned();
    let backup_path = d.data_dir.join(format!("pool/checkpoints/{id}/{backup}"));
    let size = |list: &serde_json::Value| {
        list["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == backup.as_str())
            .map(|c| c["size_bytes"].as_u64().unwrap())
            .unwrap()
    };
    let list = c
        .get_json(&format!("/v1/sandboxes/{src}/checkpoints"))
        .await
        .unwrap();
    assert_eq!(size(&list), 0, "the backup is not measured yet: {list}");
    assert!(!read_only(&backup_path), "the backup's flag waits");
    assert_eq!(sh(&c, &src, "cat /root/state").await, "mine");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = c
            .get_json(&format!("/v1/sandboxes/{src}/checkpoints"))
            .await
            .unwrap();
        if size(&list) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the backup was never measured: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        read_only(&backup_path),
        "the backup is read-only after the first command"
    );
}

/// A fork's new root has its first command's files read ahead by the daemon, from the host
/// (see `Engine::prefetch_root`), and those files are the tenant's to plant. Root in the
/// source points `/etc/ld.so.cache` at a host file by its absolute host path and makes
/// `bash` a FIFO: the fork is served, its commands run, the host file stays out of the page
/// cache (never read) and nothing hangs on the FIFO. The control: a file of the list
/// the sandbox wrote itself (`/usr/bin/env`) is read into the cache in the fork's volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forks_read_ahead_stays_in_its_tree() {
    let (d, c, src) = pool_and_source("mine").await;
    let host_file = d.data_dir.join("host-secret");
    cold_file(&host_file);
    sh(
        &c,
        &src,
        &format!(
            "ln -sf {} /etc/ld.so.cache && rm /usr/bin/bash && mkfifo /usr/bin/bash \
             && head -c 1048576 /dev/urandom > /usr/bin/env && sync",
            host_file.display()
        ),
    )
    .await;
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let fork = unique_name("fork");
    let id = c.create_sandbox(&fork_req(&fork, &src, None)).await.unwrap().id;
    assert!(from_pool(&d, &fork));
    assert_eq!(sh(&c, &fork, "cat /root/state").await, "mine");
    let env = d.data_dir.join(format!("pool/sandboxes/{id}/usr/bin/env"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while resident_pages(&env) < 256 {
        assert!(
            Instant::now() < deadline,
            "the fork's /usr/bin/env was never read ahead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(resident_pages(&host_file), 0, "the host file was read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_create_takes_a_prestarted_vm() {
    let d = Daemon::start_with(&["--prestart", "0", "--prestart-vm", "1"]);
    let c = d.client();
    let v = c.version().await.unwrap();
    let vm = v.engines.iter().find(|e| e.kind == EngineKind::Vm).unwrap();
    burrow_testkit::require!(
        vm.available,
        "the vm engine: {}",
        vm.detail.clone().unwrap_or_default()
    );
    let p = wait_pool(&c, "a VM ready", |p| p.ready == 1).await;
    assert_eq!(
        p.pools
            .iter()
            .map(|x| (x.engine, x.image.as_str(), x.target))
            .collect::<Vec<_>>(),
        [(EngineKind::Vm, "base", 1)],
        "only VMs are kept ready"
    );

    let name = unique_name("vmjob");
    let sb = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            engine: Some(EngineKind::Vm),
            env: [("GREETING".to_owned(), "hi".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.engine, EngineKind::Vm);
    assert!(from_pool(&d, &name), "the VM came from the pool");
    let seen = sh(
        &c,
        &name,
        "hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; echo $HOSTNAME; echo $GREETING",
    )
    .await;
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [&name, &name, "2", &name, "hi"],
        "{seen}"
    );

    // The control: a VM with a machine of its own boots as usual.
    let other = unique_name("vm-own");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&other).unwrap(),
        engine: Some(EngineKind::Vm),
        memory_mb: Some(384),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(
        !from_pool(&d, &other),
        "another memory size is not served from the pool"
    );
    assert_eq!(sh(&c, &other, "hostname").await, other);
    // A container create is not served by the VM pool either.
    let ct = unique_name("ct");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&ct).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!from_pool(&d, &ct));
}

/// `POST …/sleep?mode=cold`: its processes end, its disk stays.
async fn sleep_cold(c: &Client, name: &str) {
    let _: serde_json::Value = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{name}/sleep?mode=cold"),
            None::<&()>,
        )
        .await
        .unwrap_or_else(|e| panic!("sleep {name} cold: {e}"));
}

async fn set_mode(c: &Client, name: &str, mode: &str) {
    let _: serde_json::Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/policy/network"),
            Some(&serde_json::json!({ "mode": mode })),
        )
        .await
        .unwrap_or_else(|e| panic!("policy of {name}: {e}"));
}

/// How many times the daemon's log says `name` was woken or started in a pre-started
/// sandbox's runtime.
fn moves_into_pool(d: &Daemon, name: &str) -> usize {
    log(d)
        .lines()
        .filter(|l| l.contains("runs in a pre-started runtime") && l.contains(&format!("sandbox={name} ")))
        .count()
}

fn woken_into_pool(d: &Daemon, name: &str) -> bool {
    moves_into_pool(d, name) > 0
}

/// What a sandbox's identity looks like from inside: its hostname and its CA's digest (its
/// address may change at a cold wake, as at a boot; the egress probes check that its
/// policy follows it).
const IDENTITY: &str = "hostname; md5sum < /.burrow/host/ca.crt";

/// A shell line that prints CONNECTED when a TCP connection to port 80 of an outside
/// address (a benchmarking range, never routed here) is taken. Only a sandbox with egress
/// gets one: its port-80 connections are redirected to burrowd's transparent proxy on the
/// host, which accepts it (nothing is sent; no packet leaves the machine). In mode `none`
/// the rules drop it.
const EGRESS_PROBE: &str =
    "timeout 5 bash -c 'exec 3<>/dev/tcp/198.18.0.1/80 && echo CONNECTED' 2>/dev/null; true";

/// Whether the service that writes its pid to `/root/svc.pid` runs (waits up to 10 s).
const SERVICE_UP: &str = "for i in $(seq 100); do kill -0 $(cat /root/svc.pid 2>/dev/null) 2>/dev/null && echo up && exit 0; sleep 0.1; done; echo down";

/// A cold sandbox is woken in a pre-started sandbox's runtime (and, stopped, started in
/// one): its disk, name, CA,
/// checkpoints, services and policy are its own there; `/.burrow/host` is its own and read-only; its
/// in-sandbox API answers for it. The runtime stays its own across a daemon restart, and a
/// delete leaves nothing of either. Controls: the first wake is told apart from a boot by
/// the log line, the policy probe connects once the policy allows it, and a path outside
/// `/.burrow/host` is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_wake_runs_in_a_prestarted_runtime_as_itself() {
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let name = unique_name("cold");
    c.create_sandbox(&create_req(&name)).await.unwrap();
    assert!(
        sh(&c, &name, EGRESS_PROBE).await.contains("CONNECTED"),
        "control: open mode has egress"
    );
    sh(&c, &name, "echo mine > /root/state").await;
    let before = sh(&c, &name, IDENTITY).await;
    let cp: serde_json::Value = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    let cp_id = cp["id"].as_str().unwrap().to_owned();
    // A service, up (the control of the check after the wake).
    let _: serde_json::Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/services/beat"),
            Some(&serde_json::json!({"cmd": ["sh", "-c", "echo $$ > /root/svc.pid; exec sleep 1000"]})),
        )
        .await
        .unwrap();
    assert_eq!(sh(&c, &name, SERVICE_UP).await, "up");
    // Only a service started after the wake can write it again.
    sh(&c, &name, "rm /root/svc.pid").await;
    set_mode(&c, &name, "none").await;
    sleep_cold(&c, &name).await;
    wait_pool(&c, "one ready again", |p| p.ready == 1).await;
    assert!(!woken_into_pool(&d, &name));

    // The exec wakes it, in the pool's runtime.
    assert_eq!(sh(&c, &name, "cat /root/state").await, "mine");
    assert!(
        woken_into_pool(&d, &name),
        "the wake did not take the pool's runtime"
    );
    // The user is told how it woke.
    d.events_until(&name, r#""via":"pre-started""#).await;
    assert_eq!(sh(&c, &name, IDENTITY).await, before, "hostname or CA changed");
    assert_eq!(sh(&c, &name, "ls /.burrow/checkpoints").await, cp_id);
    assert_eq!(
        sh(&c, &name, SERVICE_UP).await,
        "up",
        "its service was not started again"
    );
    let inside = sh(
        &c,
        &name,
        "curl -sf --unix-socket /.burrow/api.sock http://burrow/checkpoints",
    )
    .await;
    assert!(inside.contains(&cp_id), "the in-sandbox API: {inside}");
    assert_eq!(
        sh(
            &c,
            &name,
            "touch /.burrow/host/x 2>/dev/null && echo wrote; touch /root/y && echo control"
        )
        .await,
        "control",
        "/.burrow/host must be read-only"
    );
    // Its policy (none) holds in the new runtime; open lets the same probe through.
    assert!(
        !sh(&c, &name, EGRESS_PROBE).await.contains("CONNECTED"),
        "mode none got out"
    );
    set_mode(&c, &name, "open").await;
    assert!(
        sh(&c, &name, EGRESS_PROBE).await.contains("CONNECTED"),
        "open mode has no egress"
    );

    // A daemon restart adopts it where it runs: a process started after the wake lives on.
    sh(
        &c,
        &name,
        "nohup sleep 1000 >/dev/null 2>&1 & echo $! > /root/pid",
    )
    .await;
    d.kill9();
    d.restart();
    assert_eq!(
        sh(&c, &name, "kill -0 $(cat /root/pid) && echo alive").await,
        "alive",
        "the sandbox was booted again"
    );
    assert_eq!(sh(&c, &name, IDENTITY).await, before);

    // A stop and a start: it starts in a pre-started runtime too, itself, with egress.
    wait_pool(&c, "one ready after the restart", |p| p.ready == 1).await;
    let moves = moves_into_pool(&d, &name);
    c.sandbox_action(&name, "stop").await.unwrap();
    c.sandbox_action(&name, "start").await.unwrap();
    assert_eq!(
        moves_into_pool(&d, &name),
        moves + 1,
        "the start did not take the pool's runtime"
    );
    assert_eq!(sh(&c, &name, "cat /root/state").await, "mine");
    assert_eq!(sh(&c, &name, IDENTITY).await, before);
    assert!(
        sh(&c, &name, EGRESS_PROBE).await.contains("CONNECTED"),
        "no egress after the start"
    );

    // A delete takes its runtime and its own files: only the pool's are left.
    c.delete_sandbox(&name).await.unwrap();
    let p = wait_pool(&c, "one ready after the delete", |p| p.ready == 1).await;
    assert_eq!(runc_containers(&d), p.ready as usize, "containers left: {p:?}");
    let run_dirs = std::fs::read_dir(d.data_dir.join("run")).unwrap().count();
    assert_eq!(run_dirs, p.ready as usize, "run dirs left");
    let checkpoint_dirs: Vec<String> = std::fs::read_dir(d.data_dir.join("pool/checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        checkpoint_dirs.len(),
        p.ready as usize,
        "checkpoint directories left (the donors' and discarded pool sandboxes'): {checkpoint_dirs:?}"
    );
}

/// A daemon killed while a cold wake takes a pre-started runtime (after the volume went
/// under it, before the record says so) loses
/// nothing: at the next start the half-used runtime is gone and the sandbox is asleep with
/// its disk; it wakes, with egress as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_a_cold_wake_takes_one_loses_nothing() {
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    let name = unique_name("coldcrash");
    c.create_sandbox(&create_req(&name)).await.unwrap();
    sh(&c, &name, "echo mine > /root/state").await;
    let before = sh(&c, &name, IDENTITY).await;
    sleep_cold(&c, &name).await;
    d.set_env(&[("BURROW_FAULT", "wake.before_take_over")]);
    d.kill9();
    d.restart();
    wait_pool(&c, "one ready", |p| p.ready == 1).await;
    assert!(
        c.exec(
            &name,
            &ExecRequest {
                cmd: vec!["true".into()],
                ..Default::default()
            }
        )
        .await
        .is_err(),
        "the daemon died mid-wake"
    );
    assert!(
        d.wait_exit().is_some_and(|s| !s.success()),
        "it aborted at the fault point"
    );
    assert!(d.log_text().contains("aborting at wake.before_take_over"));

    d.set_env(&[]);
    d.restart();
    wait_pool(&c, "one ready after the restart", |p| p.ready == 1).await;
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(sb.status.as_str(), "sleeping", "{sb:?}");
    assert_eq!(sh(&c, &name, "cat /root/state").await, "mine");
    assert_eq!(sh(&c, &name, IDENTITY).await, before);
    assert!(
        sh(&c, &name, EGRESS_PROBE).await.contains("CONNECTED"),
        "the woken sandbox is cut off"
    );
    let stray = stray_volumes(&d).await;
    assert!(stray.is_empty(), "{stray:?}");
    let p = wait_pool(&c, "one ready", |p| p.ready == 1).await;
    assert_eq!(
        runc_containers(&d),
        1 + p.ready as usize,
        "containers: the sandbox and the pool's"
    );
}
