//! Every host-visible name derives from the daemon's tag, so daemons side by side never
//! collide: the tag alphabet is `[a-z0-9]` and the tag is always followed by something that
//! marks where it ends (`-`, `br` at the end of a short name, or uppercase letters).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub(crate) const NETNS_DIR: &str = "/run/netns";
/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

pub(crate) fn bridge(tag: &str) -> String {
    format!("bw{tag}br")
}

pub(crate) fn table(tag: &str) -> String {
    format!("burrow_{tag}")
}

pub(crate) fn netns_prefix(tag: &str) -> String {
    format!("bw{tag}-")
}

pub(crate) fn netns(tag: &str, id: &str) -> String {
    format!("bw{tag}-{id}")
}

pub(crate) fn netns_path(tag: &str, id: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(netns(tag, id))
}

/// The host end of a sandbox's veth: `bw<tag>` then uppercase letters from a hash of tag and
/// id up to 15 bytes (7 to 12 letters, 33 to 56 bits). Uppercase keeps the tag boundary
/// unambiguous; `attach` refuses to adopt an interface whose namespace is missing, so the
/// rare hash collision is an error, never a shared interface.
pub(crate) fn veth(tag: &str, id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(tag)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let mut name = format!("bw{tag}");
    name.extend(
        digest
            .iter()
            .take(IFNAMSIZ_MAX - name.len())
            .map(|b| char::from(b'A' + b % 26)),
    );
    name
}

/// The interface group of every host-side veth of this tag: the bridge-family rules select a
/// daemon's ports by group, so a port is filtered from the moment it exists (this kernel has
/// no `meta ibrname`). `ip` takes groups up to 2^31-1, too few to encode every tag
/// bijectively, so it is a hash in [2^20, 2^31); `setup` refuses to start if another tag's
/// interface already uses it (a collision would only break connectivity, never isolation:
/// each table drops frames whose port it does not know).
pub(crate) fn port_group(tag: &str) -> u32 {
    let d = Sha256::new()
        .chain_update(b"group\0")
        .chain_update(tag)
        .finalize();
    let h = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    (1 << 20) + h % ((1 << 31) - (1 << 20))
}

/// A fixed, locally administered MAC for the bridge. Without one, the bridge takes the lowest
/// MAC among its ports and changes it as sandboxes come and go, which breaks every sandbox's
/// cached gateway neighbour entry.
pub(crate) fn bridge_mac(tag: &str) -> String {
    let d = Sha256::new()
        .chain_update(b"bridge\0")
        .chain_update(tag)
        .finalize();
    format!("02:62:{:02x}:{:02x}:{:02x}:{:02x}", d[0], d[1], d[2], d[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_separate_tags() {
        for tag in ["a", "ab", "abcdef"] {
            for id in ["x", "0123456789abcdef0123456789abcdef", "sb-1"] {
                let v = veth(tag, id);
                assert_eq!(v.len(), 15, "{v}");
                assert!(v.starts_with(&format!("bw{tag}")));
                assert!(v[2 + tag.len()..].bytes().all(|b| b.is_ascii_uppercase()));
            }
        }
        assert_ne!(veth("a", "1"), veth("a", "2"));
        assert_eq!(veth("a", "1"), veth("a", "1"));
    }

    #[test]
    fn groups_are_distinct_per_tag() {
        let tags = ["a", "b", "z", "0", "9", "aa", "a0", "zzzzzz", "999999", "a9"];
        let mut groups: Vec<u32> = tags.iter().map(|t| port_group(t)).collect();
        assert!(groups.iter().all(|g| (1 << 20..1 << 31).contains(g)));
        groups.sort_unstable();
        groups.dedup();
        assert_eq!(groups.len(), tags.len());
    }
}
