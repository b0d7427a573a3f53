//! Who started a run: the operator, the host, the key that signed its commands, and the digest
//! of the plan as recorded. Read from the process's environment once, when the run is created;
//! a resumed run keeps the original (the resumer is in `coordinator` and the notes).

use std::os::unix::fs::MetadataExt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who started a run, and from where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StartedBy {
    /// The operator: `$USER`, else the user name of the process's uid, else `uid <N>`.
    pub user: String,
    /// The host the coordinator ran on.
    pub host: String,
    /// The ID of the Ed25519 key that signed the run's commands (as `flotilla keys generate`
    /// and the agents' logs show it); absent when the commands were not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

// === impl StartedBy ===

impl StartedBy {
    /// This process's operator and host, with no signing key yet.
    pub fn this_process() -> Self {
        StartedBy {
            user: user(),
            host: host(),
            signing_key: None,
        }
    }

    /// `alice@ops-1`, with `(key AbCd…)` when the commands were signed.
    pub fn text(&self) -> String {
        match &self.signing_key {
            Some(key) => format!("{}@{} (signing key {key})", self.user, self.host),
            None => format!("{}@{} (commands unsigned)", self.user, self.host),
        }
    }
}

/// `sha256:<hex>` of the plan's text as recorded: the same digest as `sha256sum plan.toml` of
/// the file the run was started from.
pub fn plan_digest(plan_text: &str) -> String {
    let digest = Sha256::digest(plan_text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The host name, as the kernel knows it.
pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn user() -> String {
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        return user;
    }
    // `/proc/self` belongs to the process's (effective) uid.
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return "unknown".to_owned();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| name_of(&passwd, uid))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The name of `uid` in a passwd file (`name:x:uid:gid:…`).
fn name_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_digest_is_sha256_of_its_text() {
        // `printf 'name = "p"\n' | sha256sum`
        assert_eq!(
            plan_digest("name = \"p\"\n"),
            "sha256:637b38152a9ce33f2745919cf64c3302642f94b633e25eff3b3bec8563b91c02"
        );
    }

    #[test]
    fn a_uid_is_named_from_the_passwd_file() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(name_of(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(name_of(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_of(passwd, 7), None);
    }
}
