//! Crash safety: `kill -9` of burrowd while sandboxes run and in the middle of a create or
//! delete. After a restart nothing is lost and nothing is orphaned.

use std::path::Path;

use burrow_api::{CreateSandbox, SandboxName, SandboxStatus};
use burrow_testkit::fixtures::sh_req;
use burrow_testkit::{Daemon, unique_name};

fn runc_ids(data_dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .args(["--root", data_dir.join("runc").to_str().unwrap(), "list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn dir_entries(p: &Path) -> Vec<String> {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_while_running_loses_nothing() {
    let d = Daemon::start();
    let c = d.client();
    let (run, stop) = (unique_name("run"), unique_name("stop"));
    c.create_sandbox(&req(&run)).await.unwrap();
    c.create_sandbox(&req(&stop)).await.unwrap();
    c.sandbox_action(&stop, "stop").await.unwrap();
    let pid = c
        .exec(
            &run,
            &sh_req("setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!"),
        )
        .await
        .unwrap();
    let pid = pid.stdout.trim().to_owned();

    d.kill9();
    d.restart();
    let c = d.client();
    assert_eq!(c.get_sandbox(&run).await.unwrap().status, SandboxStatus::Running);
    assert_eq!(c.get_sandbox(&stop).await.unwrap().status, SandboxStatus::Stopped);
    // The process started before the crash still runs, and exec works.
    let r = c
        .exec(&run, &sh_req(&format!("kill -0 {pid} && echo alive")))
        .await
        .unwrap();
    assert_eq!(r.stdout, "alive\n");
    // The stopped one starts again.
    c.sandbox_action(&stop, "start").await.unwrap();
    assert_eq!(c.exec(&stop, &sh_req("echo up")).await.unwrap().stdout, "up\n");
}

async fn assert_no_orphans(d: &Daemon, known_ids: &[String]) {
    let mut runc = runc_ids(&d.data_dir);
    runc.sort();
    let mut vols = dir_entries(&d.data_dir.join("pool/sandboxes"));
    vols.sort();
    let mut runs = dir_entries(&d.data_dir.join("run"));
    runs.sort();
    let mut known = known_ids.to_vec();
    known.sort();
    assert_eq!(runc, known, "runc containers");
    assert_eq!(vols, known, "sandbox volumes");
    assert_eq!(runs, known, "run dirs");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_create_is_cleaned_up() {
    for point in ["create.after_snapshot", "create.after_boot"] {
        let d = Daemon::start();
        let keep = unique_name("keep");
        let keep_id = d.client().create_sandbox(&req(&keep)).await.unwrap().id;
        d.set_env(&[("BURROW_FAULT", point)]);
        d.kill9();
        d.restart();
        let half = unique_name("half");
        let err = d.client().create_sandbox(&req(&half)).await.unwrap_err();
        assert!(
            err.status().is_none(),
            "{point}: the daemon should have died mid-create, got {err}"
        );
        let status = d.wait_exit().expect("daemon exit status");
        assert!(!status.success(), "{point}: daemon did not abort");
        d.set_env(&[]);
        d.restart();
        let c = d.client();
        assert_eq!(
            c.get_sandbox(&half).await.unwrap_err().status(),
            Some(404),
            "{point}"
        );
        assert_eq!(c.get_sandbox(&keep).await.unwrap().status, SandboxStatus::Running);
        assert_no_orphans(&d, std::slice::from_ref(&keep_id)).await;
        // The name is free again.
        c.create_sandbox(&req(&half)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_delete_finishes_the_delete() {
    let d = Daemon::start();
    let name = unique_name("del");
    d.client().create_sandbox(&req(&name)).await.unwrap();
    d.set_env(&[("BURROW_FAULT", "delete.after_intent")]);
    d.kill9();
    d.restart();
    assert!(d.client().delete_sandbox(&name).await.is_err());
    d.wait_exit();
    d.set_env(&[]);
    d.restart();
    assert_eq!(
        d.client().get_sandbox(&name).await.unwrap_err().status(),
        Some(404)
    );
    assert_no_orphans(&d, &[]).await;
}
