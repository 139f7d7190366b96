//! The vm engine's guest side against a real QEMU microvm (TCG; KVM where it boots a guest):
//! the initramfs from `vm_guest::build_initramfs`, Debian's cloud kernel from
//! `scripts/guest-kit.sh`, the static agent as init, a busybox ext4 root disk. Through the
//! virtio-serial agent channel the test runs commands (they see the guest kernel, not the
//! host's), writes and reads a file, checks hostname and network configuration,
//! disconnects and reconnects, and shuts the VM down (QEMU exits).

#[path = "support/agent.rs"]
#[allow(dead_code)]
mod agent;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent::Agent;
use burrow_agent_proto::v1::{ShutdownRequest, WriteFileHeader, WriteFileInput, write_file_input};
use burrow_engine::vm_guest::{DEFAULT_GUEST_DIR, GuestKernel, build_initramfs};
use burrow_testkit::require;

const QEMU: &str = "qemu-system-x86_64";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The static agent `scripts/build.sh debug` puts next to burrowd.
/// The static agent: the musl build (`cargo test` may have rebuilt `target/debug/burrow-agent`
/// for the host's libc, which a guest without one cannot run).
fn agent_bin() -> PathBuf {
    let dir = burrow_testkit::bin_dir();
    let musl = dir
        .parent()
        .map(|t| t.join("x86_64-unknown-linux-musl/debug/burrow-agent"))
        .filter(|p| p.is_file());
    musl.unwrap_or_else(|| dir.join("burrow-agent"))
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Host TSC frequency in kHz, so the guest does not calibrate it (slow and flaky under TCG).
fn tsc_khz() -> Option<u64> {
    burrow_engine::vm::host_tsc_khz()
}

/// A busybox root tree made into an ext4 image with `mkfs.ext4 -d`.
fn make_disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["bin", "etc", "tmp", "root", "dev", "proc", "sys", "run"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "uname", "cat", "ip", "hostname", "echo"] {
        symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(tree.join("etc/group"), "root:x:0:\ntty:x:5:\n").unwrap();
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    disk
}

/// QEMU, killed on drop (a failing test leaves nothing running); prints the serial log.
struct Vm {
    child: Child,
    serial: PathBuf,
}

impl Vm {
    fn serial_log(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- guest serial console ---\n{}", self.serial_log());
        }
    }
}

fn wait_for_path(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// QMP events of the VM: `VSERPORT_CHANGE` (`open: true`) is QEMU telling the host that the
/// guest (re)opened its agent port, i.e. the next connection will be served.
struct Qmp {
    port_opened: std::sync::mpsc::Receiver<()>,
}

impl Qmp {
    fn connect(path: &Path) -> Self {
        use std::io::{BufRead, BufReader, Write};
        wait_for_path(path, Duration::from_secs(10));
        let mut sock = std::os::unix::net::UnixStream::connect(path).unwrap();
        let mut lines = BufReader::new(sock.try_clone().unwrap()).lines();
        lines.next().unwrap().unwrap(); // the greeting
        sock.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _keep = sock;
            for line in lines.map_while(Result::ok) {
                let msg: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if msg["event"] == "VSERPORT_CHANGE" && msg["data"]["open"] == true {
                    let _ = tx.send(());
                }
            }
        });
        Self { port_opened: rx }
    }

    /// Forgets the events so far.
    fn clear(&self) {
        while self.port_opened.try_recv().is_ok() {}
    }

    /// Waits for the guest to (re)open its port; `false` after `limit`.
    fn wait_port_open(&self, limit: Duration) -> bool {
        match self.port_opened.recv_timeout(limit) {
            Ok(()) => true,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            // QMP closed: QEMU is gone, and no port will ever open again.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("QEMU exited (its QMP socket closed)")
            }
        }
    }
}

/// Connects like the host must to a virtio-serial channel: when the handshake fails (the
/// guest was still busy with the previous connection and took our first bytes for its
/// stream, see `burrow-agent/src/guest/port.rs`), hang up, wait for QEMU to report that the
/// guest reopened its port, and connect again; all within `limit`.
fn connect(sock: &Path, qmp: &Qmp, limit: Duration) -> (Agent, u32) {
    let deadline = Instant::now() + limit;
    let mut failures = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        qmp.clear();
        match Agent::try_connect_within(sock, left.min(Duration::from_secs(5))) {
            Ok(agent) => return (agent, failures),
            Err(e) if Instant::now() < deadline => {
                eprintln!("handshake failed, reconnecting once the guest reopened its port: {e}");
                failures += 1;
                qmp.wait_port_open(deadline.saturating_duration_since(Instant::now()));
            }
            Err(e) => panic!("no handshake within {limit:?}: {e}"),
        }
    }
}

fn write_file(agent: &Agent, path: &str, data: &[u8]) {
    let msgs = vec![
        WriteFileInput {
            kind: Some(write_file_input::Kind::Header(WriteFileHeader {
                path: path.into(),
                mode: Some(0o644),
                mkdir: true,
            })),
        },
        WriteFileInput {
            kind: Some(write_file_input::Kind::Data(data.to_vec())),
        },
        WriteFileInput {
            kind: Some(write_file_input::Kind::Done(true)),
        },
    ];
    let mut client = agent.conn.client.clone();
    let reply = agent
        .block_on(client.write_file(tokio_stream::iter(msgs)))
        .unwrap()
        .into_inner();
    assert_eq!(reply.size, data.len() as u64);
}

#[test]
fn agent_boots_a_microvm_and_serves_over_virtio_serial() {
    require!(nix::unistd::geteuid().is_root(), "not root");
    require!(
        have(QEMU, "--version"),
        "{QEMU} is not installed (scripts/setup.sh)"
    );
    require!(have("mkfs.ext4", "-V"), "mkfs.ext4 is not installed (e2fsprogs)");
    require!(
        Path::new("/bin/busybox").exists(),
        "no /bin/busybox (busybox-static)"
    );
    let kit = GuestKernel::find(Path::new(DEFAULT_GUEST_DIR));
    let missing_kit = kit.as_ref().err().map(ToString::to_string).unwrap_or_default();
    require!(kit.is_ok(), "{missing_kit}");
    let kit = kit.unwrap();
    let agent = agent_bin();
    require!(
        agent.exists(),
        "{} not built (bash scripts/build.sh debug)",
        agent.display()
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let initramfs = dir.join("initramfs.cpio");
    let t = Instant::now();
    build_initramfs(&agent, Path::new(DEFAULT_GUEST_DIR), &initramfs).unwrap();
    eprintln!("initramfs built in {:?}", t.elapsed());
    let disk = make_disk(dir);
    let sock = dir.join("agent.sock");
    let qmp = dir.join("qmp.sock");
    let serial = dir.join("serial.log");

    let mut append = String::from(
        "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check \
         burrow.guest=1 burrow.hostname=vmbox burrow.ip=10.0.2.15/24 burrow.gw=10.0.2.2 burrow.dns=10.0.2.3",
    );
    if let Some(khz) = tsc_khz() {
        append.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let started = Instant::now();
    let child = Command::new(QEMU)
        .args([
            "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kit.boot_image())
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", &append])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,discard=unmap",
            disk.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        // restrict=on: the guest has an interface to configure, but reaches nothing.
        .args(["-netdev", "user,id=net0,restrict=on"])
        .args(["-device", "virtio-net-device,netdev=net0"])
        .args(["-device", "virtio-serial-device"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=agent,path={},server=on,wait=off",
            sock.display()
        ))
        .args([
            "-device",
            "virtserialport,chardev=agent,name=burrow.agent,id=agentport",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut vm = Vm { child, serial };
    let qmp = Qmp::connect(&qmp);
    wait_for_path(&sock, Duration::from_secs(10));

    // The first connection waits in the socket until the guest opens its port.
    let (mut a, _) = connect(&sock, &qmp, BOOT_TIMEOUT);
    eprintln!("QEMU start to agent handshake: {:?}", started.elapsed());

    let uname = a.exec(&["uname", "-r"]);
    assert!(uname.ok(), "{uname:?}");
    assert_eq!(uname.stdout.trim(), kit.release);
    let host_release = nix::sys::utsname::uname().unwrap();
    assert_ne!(uname.stdout.trim(), host_release.release().to_str().unwrap());
    let host = a.exec(&["hostname"]);
    assert_eq!(host.stdout.trim(), "vmbox");
    // /etc/hostname and /etc/hosts as in a container: read-only, naming the sandbox.
    assert_eq!(a.exec(&["cat", "/etc/hostname"]).stdout, "vmbox\n");
    let hosts = a.exec(&["cat", "/etc/hosts"]).stdout;
    assert!(hosts.starts_with("127.0.0.1\tlocalhost vmbox\n"), "{hosts}");
    let overwrite = a.sh("echo 1.2.3.4 evil >> /etc/hosts");
    assert!(!overwrite.ok(), "/etc/hosts is writable: {overwrite:?}");
    assert!(overwrite.stderr.contains("Read-only"), "{overwrite:?}");
    // Control: the root disk itself is writable.
    assert!(a.sh("echo ok > /root/probe").ok());

    let content = b"written through the agent's file API\n";
    write_file(&a, "/root/dir/note.txt", content);
    let cat = a.exec(&["cat", "/root/dir/note.txt"]);
    assert!(cat.ok(), "{cat:?}");
    assert_eq!(cat.stdout.as_bytes(), content);

    // What a container sandbox has: ptys, shm, the guest's own cgroup2.
    let mounts = a.exec(&["cat", "/proc/mounts"]).stdout;
    for want in [
        " /dev/pts devpts ",
        " /dev/shm tmpfs ",
        " /sys/fs/cgroup cgroup2 ",
        " / ext4 ",
    ] {
        assert!(mounts.contains(want), "{want:?} not in\n{mounts}");
    }
    // The network from the command line: the address on eth0, the default route, DNS.
    let addr = a.exec(&["ip", "-4", "addr", "show", "dev", "eth0"]).stdout;
    assert!(
        addr.contains("inet 10.0.2.15/24") && addr.contains("UP"),
        "{addr}"
    );
    let route = a.exec(&["ip", "-4", "route"]).stdout;
    assert!(route.contains("default via 10.0.2.2 dev eth0"), "{route}");
    let resolv = a.exec(&["cat", "/etc/resolv.conf"]).stdout;
    assert_eq!(resolv, "nameserver 10.0.2.3\n");

    // The host goes away (a daemon restart) and comes back: a new connection works, and the
    // file written before is still there. Round 0 reconnects at once (the guest may not have
    // seen the hangup yet: the handshake may fail once, then succeeds); the others first wait
    // for QEMU to report that the guest reopened its port, and must succeed at once.
    for round in 0..3 {
        qmp.clear();
        let hangup = Instant::now();
        drop(a);
        if round > 0 {
            assert!(
                qmp.wait_port_open(Duration::from_secs(30)),
                "the guest did not reopen its port after the host hung up"
            );
        }
        let t = Instant::now();
        let (next, failures) = connect(&sock, &qmp, Duration::from_secs(60));
        a = next;
        eprintln!(
            "reconnect {round}: {:?} from hangup ({:?} connecting), {failures} failed handshakes",
            hangup.elapsed(),
            t.elapsed()
        );
        if round > 0 {
            assert_eq!(failures, 0, "reconnect after the port reopened");
        }
        let cat = a.exec(&["cat", "/root/dir/note.txt"]);
        assert_eq!(cat.stdout.as_bytes(), content);
    }

    let mut client = a.conn.client.clone();
    a.block_on(client.shutdown(ShutdownRequest { grace_ms: 1000 }))
        .unwrap();
    let status = vm.wait_exit(Duration::from_secs(60));
    assert!(status.is_some(), "QEMU still runs after the guest's shutdown");
    assert!(status.unwrap().success(), "QEMU: {:?}", status);
    let log = vm.serial_log();
    assert!(log.contains("burrow-agent: guest: powering off"), "{log}");
    eprintln!("--- guest serial console ---\n{log}");
}
