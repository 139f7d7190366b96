//! `burrow cp` end to end against a real daemon: files and directory trees both ways,
//! stdin/stdout, and the `cp -r` naming rules.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use burrow_testkit::cli::{burrow, ok, ok_bytes, run};
use burrow_testkit::unique_name;

fn sh(name: &str, script: &str) -> String {
    ok(&["exec", name, "--", "sh", "-c", script])
}

fn sandbox() -> String {
    let name = unique_name("cp");
    ok_bytes(&["create", &name]);
    name
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("top.txt"), b"top\n").unwrap();
    std::fs::write(
        root.join("sub/deeper/data.bin"),
        (0..=255u8).cycle().take(1 << 20).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sub/deeper/data.bin", root.join("link")).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn files_both_ways_and_stdio() {
    let name = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("bin.dat");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o640)).unwrap();

    // Into an existing directory: keeps its name (and mode).
    ok_bytes(&["cp", local.to_str().unwrap(), &format!("{name}:/tmp")]);
    assert_eq!(sh(&name, "stat -c '%s %a' /tmp/bin.dat"), "3000000 640\n");
    // To a new name, creating parents with -p.
    ok_bytes(&[
        "cp",
        "-p",
        local.to_str().unwrap(),
        &format!("{name}:/srv/a/b/renamed.dat"),
    ]);

    // Back: to a file name, and into a directory.
    let back = dir.path().join("back.dat");
    ok_bytes(&[
        "cp",
        &format!("{name}:/srv/a/b/renamed.dat"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    ok_bytes(&["cp", &format!("{name}:/tmp/bin.dat"), into.to_str().unwrap()]);
    assert_eq!(std::fs::read(into.join("bin.dat")).unwrap(), data);

    // stdin and stdout.
    let mut child = burrow(&["cp", "-", &format!("{name}:/tmp/from-stdin")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped \x00\xff bytes")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        ok_bytes(&["cp", &format!("{name}:/tmp/from-stdin"), "-"]),
        b"piped \x00\xff bytes"
    );

    // Errors say what is wrong.
    let o = run(&[
        "cp",
        &format!("{name}:/no/such"),
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "{o:?}"
    );
    let o = run(&["cp", "a", "b"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NAME:/path"), "{o:?}");
    ok_bytes(&["rm", &name]);
}

#[test]
fn directories_both_ways() {
    let name = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("proj");
    tree(&src);

    // To a new path: takes that name. Into an existing directory: keeps its own.
    ok_bytes(&["cp", src.to_str().unwrap(), &format!("{name}:/srv/copy")]);
    ok_bytes(&["cp", src.to_str().unwrap(), &format!("{name}:/tmp")]);
    assert_eq!(
        sh(
            &name,
            "readlink /srv/copy/link; /srv/copy/run.sh; cmp /srv/copy/sub/deeper/data.bin /tmp/proj/sub/deeper/data.bin && echo same"
        ),
        "sub/deeper/data.bin\nhi\nsame\n"
    );

    // Back to a new path and into an existing directory.
    let back = dir.path().join("back");
    ok_bytes(&["cp", &format!("{name}:/srv/copy"), back.to_str().unwrap()]);
    same_tree(&src, &back);
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    ok_bytes(&["cp", &format!("{name}:/tmp/proj"), into.to_str().unwrap()]);
    same_tree(&src, &into.join("proj"));
    assert!(
        std::fs::symlink_metadata(back.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::metadata(back.join("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    // A directory to stdout is a tar stream.
    let tar = ok_bytes(&["cp", &format!("{name}:/srv/copy"), "-"]);
    let names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "copy/sub/deeper/data.bin"), "{names:?}");
    ok_bytes(&["rm", &name]);
}

/// `(mode & 0o7777, uid)` of a local path, not following symlinks.
fn mode_owner(p: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid())
}

/// A sandbox tree made to hurt whoever downloads it as root: a setuid root shell, a setgid
/// directory, a sticky directory, a FIFO, a device node if the sandbox can make one, a file
/// owned by another uid and a symlink to the host's `/etc`; and, as controls, a plain file
/// and a symlink inside the tree.
fn hostile_tree(name: &str) -> bool {
    let out = sh(
        name,
        "set -e; mkdir -p /srv/x/sgid /srv/x/sticky; cp /bin/sh /srv/x/sh; chmod 4755 /srv/x/sh; \
         chmod 2755 /srv/x/sgid; chmod 1777 /srv/x/sticky; mkfifo /srv/x/fifo; \
         echo content > /srv/x/data.txt; chown 1234:1234 /srv/x/data.txt; \
         ln -s data.txt /srv/x/inner-link; ln -s /etc /srv/x/etc-link; \
         if mknod /srv/x/null c 1 3 2>/dev/null; then echo mknod-ok; else echo mknod-refused; fi; \
         stat -c '%a %u %F' /srv/x/sh /srv/x/fifo",
    );
    let mut lines = out.lines();
    let mknod = lines.next() == Some("mknod-ok");
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["4755 0 regular file", "644 0 fifo"],
        "{out}"
    );
    mknod
}

#[test]
fn downloads_create_no_setuid_devices_or_foreign_owners() {
    let name = sandbox();
    let mknod = hostile_tree(&name);
    let me = nix_euid();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let o = run(&["cp", &format!("{name}:/srv/x"), dest.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{o:?}");
    assert!(stderr.contains("skipped FIFO 'x/fifo'"), "{stderr}");

    // No setuid/setgid/sticky bit, everything the invoking user's, no FIFO or device node.
    assert_eq!(mode_owner(&dest.join("sh")), (0o755, me));
    assert_eq!(mode_owner(&dest.join("sgid")), (0o755, me));
    assert_eq!(mode_owner(&dest.join("sticky")), (0o777, me));
    assert_eq!(mode_owner(&dest.join("data.txt")), (0o644, me));
    assert!(!dest.join("fifo").exists() && std::fs::symlink_metadata(dest.join("fifo")).is_err());
    assert!(
        std::fs::symlink_metadata(dest.join("null")).is_err(),
        "mknod inside: {mknod}"
    );
    // Controls: content and the inner symlink arrive; the symlink to /etc is a symlink, and
    // nothing but `dest` appeared next to it.
    assert_eq!(std::fs::read(dest.join("inner-link")).unwrap(), b"content\n");
    assert_eq!(
        std::fs::read_link(dest.join("etc-link")).unwrap(),
        Path::new("/etc")
    );
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["dest"]);
    // Walk the whole download: no special bit anywhere, nothing foreign-owned.
    let out = Command::new("find")
        .arg(&dest)
        .args(["(", "-perm", "/7000", "-o", "!", "-user"])
        .arg(me.to_string())
        .args([
            "-o", "-type", "p", "-o", "-type", "b", "-o", "-type", "c", ")", "-print",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "special files in the download"
    );

    // Into an existing directory (`dest/x`): the same.
    ok_bytes(&["cp", &format!("{name}:/srv/x"), dest.to_str().unwrap()]);
    assert_eq!(mode_owner(&dest.join("x/sh")), (0o755, me));

    // Positive control: with --preserve the same probe sees the setuid bit and the
    // sandbox's owners (0 for the shell, 1234 for the data file); the FIFO is still skipped.
    let kept = dir.path().join("kept");
    let o = run(&[
        "cp",
        "--preserve",
        &format!("{name}:/srv/x"),
        kept.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(mode_owner(&kept.join("sh")), (0o4755, 0));
    assert_eq!(mode_owner(&kept.join("sgid")).0, 0o2755);
    assert_eq!(mode_owner(&kept.join("sticky")).0, 0o1777);
    assert_eq!(mode_owner(&kept.join("data.txt")), (0o644, 1234));
    assert!(std::fs::symlink_metadata(kept.join("fifo")).is_err());
    // Do not leave a setuid root shell behind.
    std::fs::remove_dir_all(&kept).unwrap();
    ok_bytes(&["rm", &name]);
}

fn nix_euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[test]
fn file_downloads_never_take_special_bits() {
    let name = sandbox();
    sh(&name, "echo from-the-sandbox > /srv/f");
    let dir = tempfile::tempdir().unwrap();
    let me = nix_euid();
    // Replacing a local setuid file, or a symlink to one: the new file takes neither the
    // bit nor anything from the symlink's target.
    let suid = dir.path().join("suid");
    std::fs::write(&suid, b"original").unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4750)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&suid, &link).unwrap();
    ok_bytes(&["cp", &format!("{name}:/srv/f"), link.to_str().unwrap()]);
    assert_eq!(mode_owner(&link), (0o644, me));
    assert_eq!(std::fs::read(&link).unwrap(), b"from-the-sandbox\n");
    assert_eq!(std::fs::read(&suid).unwrap(), b"original");
    ok_bytes(&["cp", &format!("{name}:/srv/f"), suid.to_str().unwrap()]);
    assert_eq!(mode_owner(&suid), (0o750, me));
    // Control: a plain mode of the replaced file is kept.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok_bytes(&["cp", &format!("{name}:/srv/f"), plain.to_str().unwrap()]);
    assert_eq!(mode_owner(&plain), (0o600, me));
    ok_bytes(&["rm", &name]);
}
