//! Test images built from scratch in real formats: layer tarballs (gzip, plain, zstd), an OCI image layout and
//! a legacy `docker save` archive of the same image, plus the assertions on the tree they must produce.
#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const TAG: &str = "1";

pub fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

pub struct Layer {
    /// Uncompressed tar stream (its digest is the diff_id).
    pub tar: Vec<u8>,
    /// The blob as stored in the layout / registry.
    pub blob: Vec<u8>,
    pub media_type: &'static str,
}

impl Layer {
    pub fn digest(&self) -> String {
        sha256(&self.blob)
    }
}

pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn config_digest(&self) -> String {
        sha256(&self.config)
    }

    /// Every blob by digest, for layouts and mock registries.
    pub fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = vec![
            (self.manifest_digest(), self.manifest.clone()),
            (self.config_digest(), self.config.clone()),
        ];
        out.extend(self.layers.iter().map(|l| (l.digest(), l.blob.clone())));
        out
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Layer 1: a real directory tree, tarred by the `tar` crate (symlinks kept as symlinks).
fn base_layer() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let mode = |p: &str, m: u32| fs::set_permissions(r.join(p), fs::Permissions::from_mode(m)).unwrap();
    for d in ["etc", "bin", "data/sub", "usr/lib", "tmp", "keep/nested"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(r.join("etc/hostname"), "burrow\n").unwrap();
    fs::write(r.join("etc/motd"), "hello\n").unwrap();
    fs::write(r.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    mode("bin/tool", 0o755);
    fs::write(r.join("bin/su"), "setuid\n").unwrap();
    mode("bin/su", 0o4755);
    fs::write(r.join("data/old1.txt"), "old1").unwrap();
    fs::write(r.join("data/sub/old2.txt"), "old2").unwrap();
    fs::write(r.join("usr/lib/libx.so.1"), "lib").unwrap();
    symlink("libx.so.1", r.join("usr/lib/libx.so")).unwrap();
    symlink("usr/lib", r.join("lib")).unwrap();
    symlink("/usr/lib", r.join("usrlib")).unwrap();
    fs::write(r.join("to-delete.txt"), "bye").unwrap();
    fs::write(r.join("keep/nested/file.txt"), "kept").unwrap();
    mode("tmp", 0o1777);
    mode(".", 0o755);
    mode("etc", 0o750);

    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", r).unwrap();
    builder.into_inner().unwrap()
}

fn header(kind: tar::EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

pub fn append_file(b: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8], mode: u32) {
    b.append(
        &header(tar::EntryType::Regular, path, content.len() as u64, mode),
        content,
    )
    .unwrap();
}

pub fn append_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    b.append(&header(tar::EntryType::Directory, path, 0, mode), &[][..])
        .unwrap();
}

pub fn append_link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
    let mut h = header(kind, path, 0, 0o777);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
}

/// Layer 2: whiteout, opaque directory, hard links, a write through an absolute symlink, a device, xattrs.
fn change_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append_file(&mut b, ".wh.to-delete.txt", b"", 0o644);
    append_dir(&mut b, "data/", 0o755);
    append_file(&mut b, "data/.wh..wh..opq", b"", 0o644);
    append_file(&mut b, "data/new.txt", b"new", 0o644);
    append_link(&mut b, tar::EntryType::Link, "bin/tool-link", "bin/tool");
    append_file(&mut b, "etc/motd", b"updated\n", 0o640);
    append_link(&mut b, tar::EntryType::Link, "etc/motd-link", "/etc/motd");
    // `usrlib` is `-> /usr/lib` in layer 1: chroot semantics put this in <root>/usr/lib.
    append_file(&mut b, "usrlib/added.txt", b"added", 0o644);
    let mut dev = header(tar::EntryType::Char, "dev/null", 0, 0o666);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    dev.set_cksum();
    b.append(&dev, &[][..]).unwrap();
    // A file with a PAX xattr and a large uid.
    b.append_pax_extensions([("SCHILY.xattr.user.burrow", &b"yes"[..]), ("uid", &b"100000"[..])])
        .unwrap();
    append_file(&mut b, "etc/attr.txt", b"attr", 0o600);
    b.into_inner().unwrap()
}

/// Layer 3: a zstd-compressed layer.
fn zstd_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append_dir(&mut b, "opt/", 0o755);
    append_file(&mut b, "opt/z.txt", b"zstd layer", 0o644);
    b.into_inner().unwrap()
}

pub fn build_image() -> TestImage {
    let base = base_layer();
    let change = change_layer();
    let z = zstd_layer();
    let layers = vec![
        Layer {
            blob: gzip(&base),
            tar: base,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        },
        Layer {
            blob: change.clone(),
            tar: change,
            media_type: "application/vnd.oci.image.layer.v1.tar",
        },
        Layer {
            blob: zstd::encode_all(&z[..], 3).unwrap(),
            tar: z,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
        },
    ];
    image_from_layers(layers)
}

pub fn image_from_layers(layers: Vec<Layer>) -> TestImage {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", "FOO=bar"],
            "WorkingDir": "/data",
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["--help"],
            "User": "1000:1000"
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| sha256(&l.tar)).collect::<Vec<_>>()
        },
        "history": [{"created_by": "burrow-oci tests"}]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len()
        },
        "layers": layers.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest(),
            "size": l.blob.len()
        })).collect::<Vec<_>>()
    }))
    .unwrap();
    TestImage {
        layers,
        config,
        manifest,
    }
}

/// Writes an OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
pub fn write_oci_layout(dir: &Path, image: &TestImage) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest_digest(),
            "size": image.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": TAG}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    for (digest, bytes) in image.blobs() {
        fs::write(dir.join("blobs/sha256").join(hex(&digest)), bytes).unwrap();
    }
}

/// Tars a directory (archive members relative to it).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(out).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap().flush().unwrap();
}

/// Writes a legacy `docker save` archive: `manifest.json`, `<config-hex>.json`, `<id>/layer.tar` (uncompressed).
pub fn write_docker_save(out: &Path, image: &TestImage) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    let config_name = format!("{}.json", hex(&image.config_digest()));
    let mut layer_names = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let id = format!("{:064x}", i + 1);
        append_bytes(&mut b, &format!("{id}/VERSION"), b"1.0");
        append_bytes(&mut b, &format!("{id}/layer.tar"), &layer.tar);
        layer_names.push(format!("{id}/layer.tar"));
    }
    append_bytes(&mut b, &config_name, &image.config);
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["team/tool:1"],
        "Layers": layer_names
    }]);
    append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest).unwrap());
    append_bytes(&mut b, "repositories", br#"{"team/tool":{"1":"x"}}"#);
    b.into_inner().unwrap().flush().unwrap();
}

fn append_bytes(b: &mut tar::Builder<fs::File>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, bytes).unwrap();
}

/// Whether `dir`'s filesystem takes `user.*` xattrs (tmpfs before 6.6 does not).
fn user_xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(probe).unwrap();
    ok
}

/// The tree every import of [`build_image`] must produce.
pub fn assert_tree(root: &Path) {
    let read = |p: &str| fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    assert_eq!(read("etc/hostname"), "burrow\n");
    // Whiteout: gone.
    assert!(!root.join("to-delete.txt").exists(), "whiteout not applied");
    // Opaque dir: lower contents gone, new contents present.
    assert!(!root.join("data/old1.txt").exists(), "opaque dir kept old1");
    assert!(!root.join("data/sub").exists(), "opaque dir kept sub/");
    assert_eq!(read("data/new.txt"), "new");
    // Untouched dirs survive.
    assert_eq!(read("keep/nested/file.txt"), "kept");
    // Hard links share the inode, across layers and within one.
    assert_eq!(meta("bin/tool").ino(), meta("bin/tool-link").ino());
    assert_eq!(meta("bin/tool").nlink(), 2);
    assert_eq!(meta("etc/motd").ino(), meta("etc/motd-link").ino());
    assert_eq!(read("etc/motd-link"), "updated\n");
    // Symlinks intact (not followed, not rewritten).
    assert_eq!(
        fs::read_link(root.join("usr/lib/libx.so")).unwrap(),
        Path::new("libx.so.1")
    );
    assert_eq!(fs::read_link(root.join("lib")).unwrap(), Path::new("usr/lib"));
    assert_eq!(fs::read_link(root.join("usrlib")).unwrap(), Path::new("/usr/lib"));
    assert_eq!(read("lib/libx.so"), "lib");
    // Written through the absolute symlink, inside the root.
    assert_eq!(read("usr/lib/added.txt"), "added");
    // Modes, including set-id and sticky bits, and directory modes applied at the end.
    assert_eq!(meta("bin/tool").mode() & 0o7777, 0o755);
    assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(meta("etc").mode() & 0o7777, 0o750);
    assert_eq!(meta("etc/motd").mode() & 0o7777, 0o640);
    assert_eq!(meta("etc/motd").mtime(), 1_700_000_000);
    assert_eq!(
        meta("data").mtime(),
        1_700_000_000,
        "directory mtime restored after children were added"
    );
    // Later layer (zstd).
    assert_eq!(read("opt/z.txt"), "zstd layer");
    // Devices skipped.
    assert!(!root.join("dev/null").exists());
    // Ownership from PAX, when running as root.
    if meta(".").uid() == 0 && nix_is_root() {
        assert_eq!(meta("etc/attr.txt").uid(), 100_000);
    }
    if user_xattrs_supported(root.parent().unwrap()) {
        assert_eq!(
            xattr::get(root.join("etc/attr.txt"), "user.burrow").unwrap(),
            Some(b"yes".to_vec())
        );
    }
}

fn nix_is_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

pub fn assert_config(config: &burrow_oci::ImageConfig, image: &TestImage) {
    assert_eq!(config.env, ["PATH=/usr/bin:/bin", "FOO=bar"]);
    assert_eq!(config.workdir.as_deref(), Some("/data"));
    assert_eq!(config.entrypoint, ["/bin/tool"]);
    assert_eq!(config.cmd, ["--help"]);
    assert_eq!(config.user.as_deref(), Some("1000:1000"));
    assert_eq!(config.config_digest, image.config_digest());
    assert_eq!(config.platform, "linux/amd64");
}

/// Nothing but `keep` is left in `dir` (no staging directories, no half-built root).
pub fn assert_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "unexpected leftovers in {}", dir.display());
}

pub fn no_progress() -> impl FnMut(&str) {
    |_line: &str| {}
}
