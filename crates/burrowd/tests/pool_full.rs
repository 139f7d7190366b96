//! A full storage pool is visible and refused up front (issue 9): a daemon on a small pool
//! (2 GiB) that a sandbox fills for real. Writes inside fail with "No space left on device"
//! (not an I/O error); every sandbox gets a `pool.almost_full` event; `version` shows the
//! pool's use; create, fork and image builds are refused with 507 `pool_full` and a message
//! that says what to free. Control: once the data is deleted, create works again.
//! Waits are bounded polls for a condition; nothing sleeps to synchronise.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ForkSource, SandboxName};
use burrow_testkit::fixtures::sh_req;
use burrow_testkit::{Daemon, raw_unix, unique_name};

fn req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        // Its limit is above the pool's size: the pool, not the quota, runs out.
        disk_gb: Some(8),
        idle_timeout_s: Some(0),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_is_reported_and_refuses_new_sandboxes() {
    let d = Daemon::start_with(&["--pool-size-gb", "2"]);
    let c = d.client();
    let sp = c
        .version()
        .await
        .unwrap()
        .pool_space
        .expect("pool_space in version");
    assert_eq!(sp.size_bytes >> 30, 2, "{sp:?}");
    assert!(sp.free_bytes > sp.reserve_bytes, "{sp:?}");
    assert_eq!(sp.reserve_bytes, 256 << 20, "the default reserve of a small pool");

    let filler = unique_name("filler");
    c.create_sandbox(&req(&filler)).await.unwrap();
    // Positive control of the refusal below: a fork works while there is room.
    let early = unique_name("early");
    let mut fork = req(&early);
    fork.from = Some(ForkSource {
        sandbox: SandboxName::parse(&filler).unwrap(),
        checkpoint: None,
        memory: false,
    });
    c.create_sandbox(&fork).await.unwrap();

    let out = c
        .exec(&filler, &sh_req("head -c 3G /dev/zero > /root/fill; sync"))
        .await
        .unwrap();
    assert!(
        out.stderr.contains("No space left on device"),
        "a full pool is ENOSPC inside, not an I/O error: {out:?}"
    );
    let sp = c.version().await.unwrap().pool_space.unwrap();
    assert!(sp.free_bytes < sp.reserve_bytes, "{sp:?}");
    // Both sandboxes are told (the background loop looks once a second).
    for name in [&filler, &early] {
        let ev = d.events_until(name, "pool.almost_full").await;
        assert!(ev.contains("% full"), "{ev}");
    }

    let other = unique_name("other");
    let e = c.create_sandbox(&req(&other)).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(507), Some("pool_full")), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cannot create sandbox '{other}'"))
            && msg.contains("storage pool is full")
            && msg.contains("burrow images prune"),
        "{msg}"
    );
    let mut fork = req(&other);
    fork.from = Some(ForkSource {
        sandbox: SandboxName::parse(&filler).unwrap(),
        checkpoint: None,
        memory: false,
    });
    let e = c.create_sandbox(&fork).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(507), Some("pool_full")), "{e}");
    assert!(e.to_string().contains("cannot fork sandbox"), "{e}");
    let image = unique_name("img");
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/build?name={image}"),
        &[("content-type", "application/x-tar")],
        burrowfile_context("FROM base\nRUN true\n"),
    )
    .await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 507, "{body}");
    assert!(
        body.contains("pool_full") && body.contains("cannot build image"),
        "{body}"
    );
    assert!(c.get_sandbox(&other).await.is_err(), "nothing was made");

    // The CLI says so too.
    let out = std::process::Command::new(burrow_testkit::bin_dir().join("burrow"))
        .arg("version")
        .env("BURROW_SOCKET", &d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FULL: create, fork and image builds are refused"),
        "{text}"
    );

    // Control: room again (the data deleted), and create works.
    c.exec(&filler, &sh_req("rm -f /root/fill; sync")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sp = c.version().await.unwrap().pool_space.unwrap();
        if sp.free_bytes > sp.reserve_bytes {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never had room again: {sp:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.create_sandbox(&req(&other)).await.unwrap();
    for n in [&filler, &early, &other] {
        c.delete_sandbox(n).await.unwrap();
    }
}

/// A build context holding only `Burrowfile`.
fn burrowfile_context(text: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "Burrowfile", text.as_bytes()).unwrap();
    b.into_inner().unwrap()
}
