//! What the daemon leaves on the host's disk, seen by an unprivileged host user: the pool
//! (every sandbox's files) must be neither readable nor a source of setuid programs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use burrow_api::{CreateSandbox, ExecRequest, SandboxName};
use burrow_testkit::burrow_client::WriteFileOptions;
use burrow_testkit::{shared, unique_name};

/// Per-mount options of the mount exactly at `path` (the topmost one).
fn mount_options(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (Path::new(f[4]) == path).then(|| f[5].to_owned())
        })
        .next_back()
}

fn has_flag(options: &str, flag: &str) -> bool {
    options.split(',').any(|o| o == flag)
}

/// Runs `prog -u` (the host's `id`: prints the effective uid) as uid/gid 65534 with only
/// the supplementary groups given. Through `env`: setpriv keeps its capabilities until its
/// own execve, so only a program it starts looks paths up as the unprivileged user.
fn as_nobody(prog: &Path, groups: &[u32]) -> Output {
    nobody_runs(groups, &[prog.to_str().unwrap(), "-u"])
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_is_closed_to_host_users_and_setuid_inert() {
    let d = shared();
    let c = d.client();

    // pool.img: the raw disk of every sandbox, root's only. Control: the same check
    // flags a file readable by others.
    let img = d.data_dir.join("pool.img");
    let mode = std::fs::metadata(&img).expect("loop-backed pool").mode() & 0o7777;
    assert_eq!(mode, 0o600, "pool.img mode {mode:o}");
    let probe = tempfile::NamedTempFile::new().unwrap();
    std::fs::set_permissions(probe.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ne!(std::fs::metadata(probe.path()).unwrap().mode() & 0o7777, 0o600);

    // The pool mount is nosuid,nodev. Control: the root filesystem's mount (where the
    // setuid control below runs) has neither.
    let pool = d.data_dir.join("pool");
    let opts = mount_options(&pool).expect("pool mount");
    assert!(has_flag(&opts, "nosuid") && has_flag(&opts, "nodev"), "{opts}");
    let root_opts = mount_options(Path::new("/")).unwrap();
    assert!(!has_flag(&root_opts, "nosuid"), "{root_opts}");

    // A sandbox plants a setuid copy of the host's `id` (a binary that runs on the host).
    let name = unique_name("hostfiles");
    let sb = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            ..Default::default()
        })
        .await
        .expect("create");
    let id_bin = std::fs::read("/usr/bin/id").expect("/usr/bin/id on the host");
    c.write_file_bytes(
        &name,
        "/srv/id",
        WriteFileOptions {
            mode: Some(0o755),
            mkdir: true,
        },
        id_bin.clone(),
    )
    .await
    .unwrap();
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "chmod 4755 /srv/id && stat -c '%a %u' /srv/id".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "4755 0\n", "{r:?}");
    let planted = pool.join("sandboxes").join(&sb.id).join("srv/id");
    let meta = std::fs::metadata(&planted).unwrap();
    let sandbox_uid = meta.uid();
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    assert!(sandbox_uid >= 100_000, "planted file owned by {sandbox_uid}");

    // A host user cannot even reach it: the pool root is 0710 root:<sandbox root gid>.
    let root = std::fs::metadata(&pool).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o710, 0, sandbox_uid)
    );
    let o = as_nobody(&planted, &[]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{o:?}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains(&sandbox_uid.to_string()),
        "{o:?}"
    );

    // Past the directory (a user in the sandboxes' root group), nosuid keeps it inert.
    let o = as_nobody(&planted, &[sandbox_uid]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "65534\n");

    // Positive control: the same probe, as a setuid copy owned by the sandbox uid on a
    // filesystem without nosuid, does report the elevated euid.
    let dir = tempfile::Builder::new()
        .prefix("burrow-suid-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("id");
    std::fs::write(&copy, &id_bin).unwrap();
    std::os::unix::fs::chown(&copy, Some(sandbox_uid), Some(sandbox_uid)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let o = as_nobody(&copy, &[]);
    std::fs::remove_file(&copy).unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{sandbox_uid}\n"));

    // The sandbox was made after the pool root was closed: runc's init still reaches it.
    c.delete_sandbox(&name).await.unwrap();
}

/// Runs `args` as uid/gid 65534 with only the supplementary groups given (through `env`,
/// see [`as_nobody`]).
fn nobody_runs(groups: &[u32], args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    c.arg("/usr/bin/env").args(args).output().expect("setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn run_dirs_and_pool_lock_are_closed_to_host_users() {
    let d = shared();
    let c = d.client();
    let name = unique_name("hostrun");
    let sb = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            ..Default::default()
        })
        .await
        .expect("create");
    let run = d.data_dir.join("run");
    let dir = run.join(&sb.id);
    let sock = dir.join("host/api.sock");
    let sock = sock.to_str().unwrap();
    let gid = std::fs::metadata(&dir).unwrap().gid();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o710);
    assert_ne!(gid, 0);

    // Sandbox ids are not listed to host users.
    let o = nobody_runs(&[], &["ls", run.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{o:?}"
    );
    let o = nobody_runs(&[], &["stat", run.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");

    // The in-sandbox API (checkpoint, restore) is out of a host user's reach.
    let o = nobody_runs(&[], &["stat", sock]);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{o:?}"
    );
    let curl = ["curl", "-sS", "--unix-socket", sock, "http://burrow/checkpoints"];
    let o = nobody_runs(&[], &curl);
    assert!(!o.status.success(), "{o:?}");
    assert!(!text(&o).contains("\"checkpoints\""), "{o:?}");
    // Control: the same probe, in the sandboxes' root group (what runc's init runs as),
    // reaches it.
    let o = nobody_runs(&[gid], &curl);
    assert!(o.status.success(), "{o:?}");
    assert!(text(&o).contains("\"checkpoints\""), "{o:?}");

    // Spooled uploads (build contexts, image archives): an import, even a refused one,
    // makes the spool dir; host users may not list it.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"not an image archive").unwrap();
    let o = d
        .cli()
        .args(["images", "import", junk.path().to_str().unwrap(), "--name"])
        .arg(unique_name("junk"))
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let spool = d.data_dir.join("tmp");
    assert_eq!(std::fs::metadata(&spool).unwrap().mode() & 0o7777, 0o700);
    let o = nobody_runs(&[], &["ls", spool.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{o:?}"
    );

    // pool.lock: a host user who could open it could hold it and stall every start.
    let lock = d.data_dir.join("pool.lock");
    assert_eq!(std::fs::metadata(&lock).unwrap().mode() & 0o7777, 0o600);
    let o = nobody_runs(&[], &["flock", "-n", lock.to_str().unwrap(), "true"]);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{o:?}"
    );
    // Control: the same probe takes the lock of a file it may open.
    let other = tempfile::Builder::new().tempfile_in("/var/tmp").unwrap();
    std::fs::set_permissions(other.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = nobody_runs(&[], &["flock", "-n", other.path().to_str().unwrap(), "true"]);
    assert!(o.status.success(), "{o:?}");
    c.delete_sandbox(&name).await.unwrap();
}
