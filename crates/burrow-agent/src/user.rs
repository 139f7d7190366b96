//! Resolves the `user` of an exec request (`name`, `uid`, `name:group`, `uid:gid`) against
//! the sandbox's own `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static musl binary, so there is no NSS: the files are parsed here. Parsing
//! is pure (strings in, identity out) so it is unit-tested without touching the system.

use std::path::PathBuf;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, primary gid included.
    pub groups: Vec<u32>,
    /// Login name, when the uid has a passwd entry.
    pub name: Option<String>,
    /// Home directory from passwd, when known.
    pub home: Option<PathBuf>,
}

/// Why a user spec could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next()?;
        let home = f.next()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry { name, uid, gid, home })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let gid = f.next()?.parse().ok()?;
        let members = f.next().unwrap_or("");
        (!name.is_empty() && !name.starts_with('#')).then_some(GroupEntry { name, gid, members })
    })
}

fn numeric(s: &str) -> Option<u32> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Resolves `spec` (empty = root) given the contents of passwd and group files.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let entry = match numeric(user_part) {
        Some(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        None => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_owned()))?,
        ),
    };
    let uid = entry
        .as_ref()
        .map_or_else(|| numeric(user_part).unwrap_or(0), |e| e.uid);
    // Like Docker: a numeric uid without a passwd entry gets gid 0 unless one is given.
    let mut gid = entry.as_ref().map_or(0, |e| e.gid);
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match numeric(g) {
            Some(gid) => gid,
            None => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        };
    }

    let name = entry.as_ref().map(|e| e.name.to_owned());
    let mut groups = vec![gid];
    if let Some(name) = &name {
        for g in group_entries(group) {
            if g.members.split(',').any(|m| m.trim() == name) && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    let home = entry
        .as_ref()
        .filter(|e| !e.home.is_empty())
        .map(|e| PathBuf::from(e.home));
    let name = name.or_else(|| (uid == 0).then(|| "root".to_owned()));
    let home = home.or_else(|| (uid == 0).then(|| PathBuf::from("/root")));
    Ok(Identity {
        uid,
        gid,
        groups,
        name,
        home,
    })
}

/// Resolves `spec` against this system's `/etc/passwd` and `/etc/group` (missing files are
/// treated as empty).
pub fn resolve_local(spec: &str) -> Result<Identity, UserError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\n\
        adm:x:4:alice,bob\n\
        docker:x:999:alice\n\
        alice:x:1000:\n\
        nogroup:x:65534:\n";

    #[test]
    fn empty_spec_is_root() {
        let id = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.groups.as_slice()), (0, 0, &[0][..]));
        assert_eq!(id.home, Some(PathBuf::from("/root")));
        assert_eq!(id.name.as_deref(), Some("root"));
    }

    #[test]
    fn name_resolves_with_supplementary_groups() {
        let id = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000, 4, 999]);
        assert_eq!(id.home, Some(PathBuf::from("/home/alice")));
    }

    #[test]
    fn numeric_uid_known_and_unknown() {
        let id = resolve("65534", PASSWD, GROUP).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.name.as_deref()),
            (65534, 65534, Some("nobody"))
        );
        let id = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.groups.as_slice()), (4242, 0, &[0][..]));
        assert_eq!((id.name, id.home), (None, None));
    }

    #[test]
    fn explicit_group_by_name_and_number() {
        let id = resolve("alice:docker", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 999));
        let id = resolve("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (4242, 7));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("mallory", PASSWD, GROUP),
            Err(UserError::UnknownUser("mallory".into()))
        );
        assert_eq!(
            resolve("alice:nope", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nope".into()))
        );
    }
}
