//! A VM's network: a tap in the sandbox's network namespace, the guest on a private
//! point-to-point link behind it, and masquerade onto the namespace's `eth0`.
//!
//! The host wires the namespace exactly as for a container (veth `eth0` with the sandbox's
//! address, the same bridge, nftables rules, DNS policy, proxy). The namespace then routes
//! the guest's traffic out of `eth0` with the sandbox's address as its source, so every
//! rule on the host sees the same address whatever the engine. The guest cannot change any
//! of this: the namespace is outside the VM.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{EngineError, Result};

/// The tap QEMU opens inside the namespace.
pub const TAP: &str = "tap0";
/// The namespace's end of the guest link.
pub const HOST_SIDE: &str = "169.254.100.1";
/// The guest's address on its link, with the prefix.
pub const GUEST_ADDR: &str = "169.254.100.2/30";

/// The script run inside the namespace; idempotent (a restart runs it again). The tap
/// belongs to QEMU's uid, which opens it without privileges.
fn script(uid: u32, gid: u32) -> String {
    format!(
        "set -e
ip link del {TAP} 2>/dev/null || true
ip tuntap add dev {TAP} mode tap user {uid} group {gid}
ip addr replace {HOST_SIDE}/30 dev {TAP}
ip link set {TAP} up
echo 1 > /proc/sys/net/ipv4/ip_forward
nft -f - <<'EOF'
table ip burrow_vm
delete table ip burrow_vm
table ip burrow_vm {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname \"eth0\" ip saddr {HOST_SIDE}/30 masquerade
  }}
}}
EOF
"
    )
}

/// Makes the tap and the masquerade in the namespace at `netns`.
pub fn wire(netns: &Path, uid: u32, gid: u32) -> Result<()> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "sh", "-c", &script(uid, gid)])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EngineError::Command {
            cmd: "nsenter".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(EngineError::Command {
            cmd: format!("wiring the VM's tap in {}", netns.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_the_tap_and_the_link() {
        let s = script(2070000, 2070000);
        assert!(s.contains("ip tuntap add dev tap0 mode tap user 2070000 group 2070000"));
        assert!(s.contains("masquerade"));
        assert!(s.contains("169.254.100.1/30"));
    }
}
