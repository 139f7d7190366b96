//! The README's shell blocks, run against a real daemon, so a quick start cannot break
//! silently (the SDK READMEs are run by their own suites).
//!
//! Each ```sh block runs as one `bash -e` script, in order, against one daemon, from a scratch
//! directory that holds what the README assumes is there (`./src`, a `Burrowfile`,
//! `~/.gh-token`). The API examples' fixed paths and address are swapped for this daemon's.
//! What cannot run here is named, with the reason, and never silently: a block preceded by
//! `<!-- docs-test: not run: REASON -->`, or a line listed in [`NOT_RUN`] (each entry must
//! still match a README line, so the list cannot rot). Lines that need the vm engine run when it
//! is there, which `BURROW_TEST_STRICT=1` (CI) demands.

use std::path::Path;
use std::process::Command;

use burrow_api::EngineKind;
use burrow_testkit::{Daemon, bin_dir, require};

/// README lines (by prefix) that a test cannot run, and why.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "burrow exec -t -i dev -- bash",
        "needs a terminal (exec.rs tests the TTY)",
    ),
    ("burrow console dev", "needs a terminal (exec.rs tests the TTY)"),
    (
        "burrow exec -t web -- bash",
        "needs a terminal (sessions.rs tests detaching)",
    ),
    (
        "burrow attach web <id>",
        "needs a terminal and a session id (sessions.rs tests attach)",
    ),
    (
        "burrow service logs -f web app",
        "follows until Ctrl-C (services.rs tests follow)",
    ),
    (
        "burrow proxy web 5432:5432",
        "forwards until Ctrl-C (the CLI's ingress tests run it)",
    ),
    (
        "burrow images import ./image.tar",
        "needs an image archive (images.rs imports real ones)",
    ),
    (
        "burrow images pull 127.0.0.1:5000/",
        "needs a registry (images.rs pulls from a real one)",
    ),
    (
        "burrow exec dev -- sh -c 'curl -s https://api.github.com/",
        "reaches the internet (network.rs tests the secret proxy against a fake one)",
    ),
];

/// Lines that need the vm engine.
const NEEDS_VM: &[&str] = &[
    "burrow create vm1",
    "burrow sleep vm1",
    "burrow checkpoint vm1",
    "burrow fork vm1",
];

struct Block {
    line: usize,
    text: String,
    not_run: Option<String>,
}

/// The ```sh blocks of a markdown text, with the reason a block is not run, if one is given
/// by the line before its fence.
fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    let mut previous = "";
    while let Some((n, line)) = lines.next() {
        if line.trim() == "```sh" {
            let not_run = previous
                .trim()
                .strip_prefix("<!-- docs-test: not run:")
                .and_then(|r| r.strip_suffix("-->"))
                .map(|r| r.trim().to_owned());
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            blocks.push(Block {
                line: n + 1,
                text,
                not_run,
            });
        }
        previous = line;
    }
    blocks
}

/// The block as a script: lines that cannot run become a `:` that says why.
fn script(block: &str, vm: bool, skipped: &mut Vec<String>) -> String {
    let mut out = String::from("set -euo pipefail\n");
    // One command per logical line: a trailing `\\` continues it.
    let mut commands: Vec<String> = Vec::new();
    let mut continued = false;
    for l in block.lines() {
        match commands.last_mut() {
            Some(last) if continued => {
                last.push('\n');
                last.push_str(l);
            }
            _ => commands.push(l.to_owned()),
        }
        continued = l.ends_with('\\');
    }
    for line in &commands {
        let reason = NOT_RUN
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix))
            .map(|(_, why)| why.to_string())
            .or_else(|| {
                (!vm && NEEDS_VM.iter().any(|p| line.starts_with(p))).then(|| "no vm engine here".to_owned())
            });
        match reason {
            Some(why) => {
                skipped.push(format!("{line}\n    ({why})"));
                out.push_str(": not run\n");
            }
            None => {
                out.push_str(&format!("echo '+ {}' >&2\n", line.replace('\'', r"'\''")));
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// What the README's commands expect in the directory they run from and in `$HOME`.
fn scratch_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.py"), "print('hello from src')\n").unwrap();
    std::fs::write(
        dir.join("Burrowfile"),
        "FROM base\nRUN echo built > /built.txt\nWORKDIR /srv\n",
    )
    .unwrap();
    std::fs::write(dir.join(".gh-token"), "ghp_not_a_real_token\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_shell_block_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README.md");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 4, "found {} sh blocks in README.md", blocks.len());
    for (prefix, _) in NOT_RUN.iter() {
        assert!(
            readme.lines().any(|l| l.starts_with(prefix)),
            "NOT_RUN names `{prefix}`, which is no longer in README.md: drop it from the list"
        );
    }

    let d = Daemon::start();
    let version = d.client().version().await.expect("version");
    let vm = version
        .engines
        .iter()
        .any(|e| e.kind == EngineKind::Vm && e.available);
    require!(vm, "the vm engine (the README's vm lines); run scripts/setup.sh");

    let dir = tempfile::tempdir().unwrap();
    scratch_dir(dir.path());
    let socket = d.socket.display().to_string();
    let token_file = d.data_dir.join("admin.token").display().to_string();
    let addr = d.addr().to_string();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let mut skipped = Vec::new();
    let mut ran = 0;
    for block in &blocks {
        if let Some(why) = &block.not_run {
            skipped.push(format!("README.md:{} (the whole block)\n    ({why})", block.line));
            continue;
        }
        let text = block
            .text
            .replace("/run/burrow/burrowd.sock", &socket)
            .replace("/var/lib/burrow/admin.token", &token_file)
            .replace("127.0.0.1:7440", &addr);
        let out = Command::new("bash")
            .arg("-c")
            .arg(script(&text, vm, &mut skipped))
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env("PATH", &path)
            .env("BURROW_SOCKET", &d.socket)
            .env_remove("BURROW_URL")
            .env_remove("BURROW_TOKEN")
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "README.md:{}: the block failed ({}):\n--- stdout\n{}\n--- stderr (each command echoed)\n{}",
            block.line,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    eprintln!("ran {ran} README blocks; not run:\n{}", skipped.join("\n"));
    assert!(ran >= 3, "only {ran} README blocks ran");

    // What the blocks did is there: the image built from the scratch Burrowfile, the copy
    // back out of `web`, and `dev` made again over the API by the curl examples.
    let c = d.client();
    let images = c.list_images().await.expect("images");
    assert!(
        images.images.iter().any(|i| i.name == "my-img"),
        "the README's `images build` made my-img: {images:?}"
    );
    assert!(
        dir.path().join("app-copy/main.py").is_file(),
        "`burrow cp web:/srv/app ./app-copy` copied the tree back"
    );
    c.get_sandbox("dev").await.expect("the API example created dev");
}
