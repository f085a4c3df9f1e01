//! The guest configuration (`config.json` on the read-only config drive, `/dev/vdb`).
//!
//! Written by the host engine at create, read once by lohar at boot, after which
//! lohar unmounts the drive so the guest cannot re-read the agent token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A file the guest writes at boot. `content` is base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// The file's bytes, base64-encoded (standard alphabet, padded).
    pub content: String,
    /// Octal permission bits such as `"0600"`; empty or unparsable means `0644`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
}

/// A block device the guest mounts at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVolume {
    /// Guest block device to mount, e.g. `/dev/vdc`.
    pub device: String,
    /// Absolute mount point in the guest; created if missing.
    pub mount: String,
    /// Filesystem type passed to `mount(2)`; `ext4` when absent.
    #[serde(default = "default_fs")]
    pub fs: String,
    /// Mount read-only (otherwise the mount point is handed to the sandbox user).
    #[serde(default)]
    pub read_only: bool,
}

fn default_fs() -> String {
    "ext4".into()
}

/// Network settings for guests whose kernel did not apply `ip=` itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigNet {
    /// eth0's IPv4 address and prefix length, `a.b.c.d/prefix` (`/32` if omitted).
    pub address: String,
    /// IPv4 address of the default gateway; empty for none.
    pub gateway: String,
}

/// `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// The host's id of this sandbox.
    #[serde(default)]
    pub sandbox_id: String,
    /// Guest hostname; empty for the agent's default.
    #[serde(default)]
    pub hostname: String,
    /// Secret the host sends in the AUTH frame of every connection; empty
    /// means the agent accepts connections without one.
    #[serde(default)]
    pub token: String,
    /// Environment variables added to every exec and session.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files written at boot, keyed by absolute guest path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, ConfigFile>,
    /// Block devices mounted at boot, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ConfigVolume>,
    /// Shell script started at boot as the attachable TTY session `init`;
    /// empty for none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init: String,
    /// Nameservers for `/etc/resolv.conf`; empty for public resolvers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The sandbox network's own resolver; when set it replaces `dns`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns_internal: String,
    /// `"lohar"` (uid 1000, the default), `"root"`, or an image's own user
    /// (a name, uid or `uid:gid` looked up in the guest's `/etc/passwd`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Working directory for execs and shells that name none (an image's
    /// `WorkingDir`); empty for the agent's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cwd: String,
    /// eth0's address and gateway; when present they override the kernel
    /// command line's `ip=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<ConfigNet>,
    /// Leave user namespaces available to the sandbox user. By default the
    /// guest turns them off at boot (kernel attack surface); absent in configs
    /// from older hosts, which means off.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_userns: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_shaped_config_parses() {
        let c: GuestConfig = serde_json::from_str(
            r#"{"sandbox_id":"ab","hostname":"dev","token":"t","env":{"A":"1"},
            "files":{"/home/lohar/x":{"content":"aGk=","mode":"0600"}},
            "volumes":[{"device":"/dev/vdc","mount":"/workspace","fs":"ext4","read_only":false}],
            "init":"echo hi","dns":["1.1.1.1"],"user":"lohar"}"#,
        )
        .unwrap();
        assert_eq!(c.files["/home/lohar/x"].mode, "0600");
        assert_eq!(c.volumes[0].device, "/dev/vdc");
        let back: GuestConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(!c.allow_userns, "absent means off");
        assert!(!serde_json::to_string(&c).unwrap().contains("allow_userns"));
        let c = GuestConfig {
            allow_userns: true,
            ..GuestConfig::default()
        };
        let back: GuestConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert!(back.allow_userns);
    }
}
