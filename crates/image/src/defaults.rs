//! The parts of an OCI image config a sandbox honours: Env, WorkingDir and
//! User become the defaults for exec and shell. (Entrypoint and Cmd do not:
//! a sandbox's PID 1 is lohar and it runs what the caller asks.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An image's defaults for the processes started in its sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `Env`, as `KEY=value` pairs split at the first `=`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `WorkingDir`; empty for none.
    #[serde(default)]
    pub working_dir: String,
    /// `User`: a name or `uid[:gid]`; empty means root, as in Docker.
    #[serde(default)]
    pub user: String,
}

impl ImageDefaults {
    /// From an image config blob (OCI or Docker v2; both keep the runtime
    /// settings under `config`). Unknown or malformed fields are ignored:
    /// the image still boots, with lohar's defaults.
    pub fn from_config_json(json: &[u8]) -> ImageDefaults {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "PascalCase")]
        struct Runtime {
            #[serde(default)]
            env: Option<Vec<String>>,
            #[serde(default)]
            working_dir: Option<String>,
            #[serde(default)]
            user: Option<String>,
        }
        #[derive(Deserialize, Default)]
        struct File {
            #[serde(default)]
            config: Option<Runtime>,
        }
        let rt = serde_json::from_slice::<File>(json)
            .ok()
            .and_then(|f| f.config)
            .unwrap_or_default();
        let env = rt
            .env
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect();
        ImageDefaults {
            env,
            working_dir: rt.working_dir.unwrap_or_default(),
            user: rt.user.unwrap_or_default(),
        }
    }

    /// Whether processes run as root: Docker's rule, an empty `User` is root.
    pub fn runs_as_root(&self) -> bool {
        let u = self.user.split(':').next().unwrap_or("");
        u.is_empty() || u == "root" || u == "0"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fields_are_read_and_env_split_at_the_first_equals() {
        let d = ImageDefaults::from_config_json(
            br#"{"architecture":"amd64","config":{"Env":["PATH=/usr/local/bin:/usr/bin","A=b=c","bad",""],"WorkingDir":"/app","User":"1000:1000"}}"#,
        );
        assert_eq!(d.env["PATH"], "/usr/local/bin:/usr/bin");
        assert_eq!(d.env["A"], "b=c");
        assert_eq!(d.env.len(), 2);
        assert_eq!(d.working_dir, "/app");
        assert!(!d.runs_as_root());
    }

    #[test]
    fn missing_or_malformed_config_gives_root_defaults() {
        for j in [
            &b"{}"[..],
            b"not json",
            br#"{"config":null}"#,
            br#"{"config":{"User":"root"}}"#,
        ] {
            let d = ImageDefaults::from_config_json(j);
            assert!(d.env.is_empty() && d.working_dir.is_empty());
            assert!(d.runs_as_root(), "{}", String::from_utf8_lossy(j));
        }
    }
}
