//! The guest configuration (`config.json` on the read-only config drive, `/dev/vdb`).
//!
//! Written by the host engine at create, read once by lohar at boot, after which
//! lohar unmounts the drive so the guest cannot re-read the agent token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A file the guest writes at boot. `content` is base64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub content: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
}

/// A block device the guest mounts at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVolume {
    pub device: String,
    pub mount: String,
    #[serde(default = "default_fs")]
    pub fs: String,
    #[serde(default)]
    pub read_only: bool,
}

fn default_fs() -> String {
    "ext4".into()
}

/// Network settings for guests whose kernel did not apply `ip=` itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigNet {
    /// `a.b.c.d/prefix`
    pub address: String,
    pub gateway: String,
}

/// `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    #[serde(default)]
    pub sandbox_id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub token: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, ConfigFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ConfigVolume>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
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
