//! `import_archive` on real OCI layouts and docker-save archives built by the tests: the resulting tree,
//! corruption and truncation handling, and entries that try to leave the root.

mod common;

use std::fs;
use std::path::Path;

use burrow_oci::{ImportOptions, OciError, Platform, import_archive};
use common::*;

fn opts() -> ImportOptions {
    ImportOptions {
        platform: Platform::linux_amd64(),
        image: None,
    }
}

fn import(archive: &Path, dest: &Path) -> Result<burrow_oci::ImageConfig, OciError> {
    let mut lines = Vec::new();
    let result = import_archive(archive, dest, &opts(), &mut |l: &str| lines.push(l.to_owned()));
    if result.is_ok() {
        assert!(
            lines.iter().any(|l| l.contains("layer 3/3")),
            "progress per layer: {lines:?}"
        );
    }
    result
}

#[test]
fn imports_oci_layout_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image();
    write_oci_layout(&tmp.path().join("layout"), &image);
    tar_dir(&tmp.path().join("layout"), &tmp.path().join("image.tar"));

    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let config = import(&tmp.path().join("image.tar"), &out.join("root")).unwrap();
    assert_tree(&out.join("root"));
    assert_config(&config, &image);
    assert_eq!(
        config.manifest_digest.as_deref(),
        Some(image.manifest_digest().as_str())
    );
    assert_eq!(config.digest, config.manifest_digest);
    assert_only(&out, &["root"]);
}

#[test]
fn imports_oci_layout_directory_and_gzipped_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image();
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &image);
    import(&layout, &tmp.path().join("from-dir")).unwrap();
    assert_tree(&tmp.path().join("from-dir"));

    tar_dir(&layout, &tmp.path().join("image.tar"));
    let tar = fs::read(tmp.path().join("image.tar")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    fs::write(tmp.path().join("image.tar.gz"), gz.finish().unwrap()).unwrap();
    // An existing empty directory is an acceptable destination.
    fs::create_dir(tmp.path().join("from-gz")).unwrap();
    import(&tmp.path().join("image.tar.gz"), &tmp.path().join("from-gz")).unwrap();
    assert_tree(&tmp.path().join("from-gz"));
}

#[test]
fn imports_docker_save_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image();
    write_docker_save(&tmp.path().join("save.tar"), &image);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let config = import(&tmp.path().join("save.tar"), &out.join("root")).unwrap();
    assert_tree(&out.join("root"));
    assert_config(&config, &image);
    assert_eq!(config.manifest_digest, None, "legacy docker save has no manifest");
    assert_only(&out, &["root"]);

    // Selecting by tag works; an unknown tag is a clear error.
    let mut named = opts();
    named.image = Some("team/tool:1".into());
    import_archive(
        &tmp.path().join("save.tar"),
        &out.join("named"),
        &named,
        &mut |_| {},
    )
    .unwrap();
    named.image = Some("nope".into());
    let err = import_archive(
        &tmp.path().join("save.tar"),
        &out.join("nope"),
        &named,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// Writes the layout with one blob replaced, tars it, imports it into `out/root`, returns the error.
fn import_with_bad_blob(tmp: &Path, image: &TestImage, layer: usize, bad: Vec<u8>) -> OciError {
    let layout = tmp.join("layout");
    write_oci_layout(&layout, image);
    fs::write(
        layout
            .join("blobs/sha256")
            .join(hex(&image.layers[layer].digest())),
        bad,
    )
    .unwrap();
    tar_dir(&layout, &tmp.join("bad.tar"));
    let out = tmp.join("out");
    fs::create_dir(&out).unwrap();
    let err = import(&tmp.join("bad.tar"), &out.join("root")).unwrap_err();
    // Nothing half-extracted, no staging directory left over.
    assert_only(&out, &[]);
    err
}

#[test]
fn flipped_byte_is_refused_naming_the_blob() {
    let image = build_image();
    for layer in [0, 1] {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad = image.layers[layer].blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let err = import_with_bad_blob(tmp.path(), &image, layer, bad);
        let digest = image.layers[layer].digest();
        assert!(
            matches!(&err, OciError::DigestMismatch { digest: d, .. } if *d == digest),
            "layer {layer}: {err}"
        );
        assert!(err.to_string().contains(&digest), "{err}");
    }
}

#[test]
fn truncated_layer_is_refused() {
    let image = build_image();
    for layer in [0, 1, 2] {
        let tmp = tempfile::tempdir().unwrap();
        let blob = &image.layers[layer].blob;
        let err = import_with_bad_blob(tmp.path(), &image, layer, blob[..blob.len() * 2 / 3].to_vec());
        let digest = image.layers[layer].digest();
        assert!(
            matches!(&err, OciError::Truncated { digest: d, .. } if *d == digest),
            "layer {layer}: {err}"
        );
    }
}

#[test]
fn corrupt_docker_save_layer_fails_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut image = build_image();
    // Same size, different content: only the diff_id check can notice.
    let tar = &mut image.layers[1].tar;
    let pos = tar.windows(7).position(|w| w == b"updated").unwrap();
    tar[pos] = b'U';
    write_docker_save(&tmp.path().join("save.tar"), &image);
    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let err = import(&tmp.path().join("save.tar"), &out.join("root")).unwrap_err();
    assert!(matches!(err, OciError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains("layer.tar"), "{err}");
    assert_only(&out, &[]);
}

#[test]
fn refuses_wrong_platform_and_bad_destinations() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image();
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &image);

    let arm = ImportOptions {
        platform: "linux/arm64".parse().unwrap(),
        image: None,
    };
    let err = import_archive(&layout, &tmp.path().join("a"), &arm, &mut |_| {}).unwrap_err();
    assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");

    let full = tmp.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("x"), "x").unwrap();
    let err = import(&layout, &full).unwrap_err();
    assert!(matches!(err, OciError::Destination { .. }), "{err}");
    assert!(full.join("x").exists());

    let err = import(&tmp.path().join("missing.tar"), &tmp.path().join("b")).unwrap_err();
    assert!(matches!(err, OciError::Io { .. }), "{err}");
    fs::write(tmp.path().join("junk.tar"), vec![0u8; 4096]).unwrap();
    let err = import(&tmp.path().join("junk.tar"), &tmp.path().join("c")).unwrap_err();
    assert!(matches!(err, OciError::UnsupportedArchive { .. }), "{err}");
    assert!(
        !tmp.path().join("a").exists() && !tmp.path().join("b").exists() && !tmp.path().join("c").exists()
    );
}

/// A raw tar member: name, type, link target, content.
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

/// A single-layer image from a hand-written tar whose member names bypass the `tar` crate's checks.
fn image_with_raw_layer(entries: &[RawEntry<'_>]) -> TestImage {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, content) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*kind);
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, *content).unwrap();
    }
    let tar = b.into_inner().unwrap();
    image_from_layers(vec![Layer {
        blob: tar.clone(),
        tar,
        media_type: "application/vnd.oci.image.layer.v1.tar",
    }])
}

fn import_image(tmp: &Path, image: &TestImage, dest: &Path) -> Result<burrow_oci::ImageConfig, OciError> {
    let layout = tmp.join(format!("layout-{}", hex(&image.manifest_digest())));
    write_oci_layout(&layout, image);
    import_archive(&layout, dest, &opts(), &mut no_progress())
}

#[test]
fn entries_never_escape_the_root() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_abs = outside.to_str().unwrap().as_bytes().to_vec();
    let deep_up = b"../../../../../../../../../..".to_vec();

    // Symlinked parents are resolved inside the root (like a chroot), whatever they point at.
    let image = image_with_raw_layer(&[
        (b"abs", Symlink, &outside_abs, b""),
        (b"abs/written.txt", Regular, b"", b"abs"),
        (b"up", Symlink, &deep_up, b""),
        (b"up/tmp/up.txt", Regular, b"", b"up"),
        (b"dir/", Directory, b"", b""),
        (b"dir/self", Symlink, b"..", b""),
        (b"dir/self/dir/self/x.txt", Regular, b"", b"x"),
        (b"/absolute.txt", Regular, b"", b"a"),
    ]);
    let root = tmp.path().join("root");
    import_image(tmp.path(), &image, &root).unwrap();
    assert_only(&outside, &[]);
    let inside = root.join(outside.strip_prefix("/").unwrap());
    assert_eq!(fs::read_to_string(inside.join("written.txt")).unwrap(), "abs");
    assert_eq!(fs::read_to_string(root.join("tmp/up.txt")).unwrap(), "up");
    assert_eq!(fs::read_to_string(root.join("x.txt")).unwrap(), "x");
    assert_eq!(fs::read_to_string(root.join("absolute.txt")).unwrap(), "a");
    // The symlinks themselves are stored verbatim.
    assert_eq!(fs::read_link(root.join("abs")).unwrap(), outside);

    // `..` in a member name is refused outright.
    for (name, kind, link) in [
        (&b"../evil.txt"[..], Regular, &b""[..]),
        (b"a/../../evil.txt", Regular, b""),
        (b"link", Link, b"../../etc/passwd"),
    ] {
        let image = image_with_raw_layer(&[(name, kind, link, b"evil")]);
        let dest = tmp.path().join("refused");
        let err = import_image(tmp.path(), &image, &dest).unwrap_err();
        assert!(matches!(err, OciError::Layer { .. }), "{err}");
        assert!(err.to_string().contains(".."), "{err}");
        assert!(!dest.exists());
    }
    assert!(!tmp.path().join("evil.txt").exists());

    // A hard link through a symlinked parent still resolves inside the root.
    let image = image_with_raw_layer(&[
        (b"escape", Symlink, b"/", b""),
        (b"secret", Regular, b"", b"inside"),
        (b"hl", Link, b"escape/secret", b""),
    ]);
    let dest = tmp.path().join("hl");
    import_image(tmp.path(), &image, &dest).unwrap();
    assert_eq!(fs::read_to_string(dest.join("hl")).unwrap(), "inside");
}
