//! Image tarballs: what `docker save` writes (both its classic layout and
//! the OCI layout Docker 25+ writes beside `manifest.json`) and plain OCI
//! image layouts (`oci-layout` + `index.json` + `blobs/`).
//!
//! The tarball is read once, front to back, and never held in memory: layer
//! entries stream into the [`BlobCache`] under their digest (checked against
//! the name for `blobs/sha256/<hex>` entries, computed for classic
//! `<id>/layer.tar` ones); only the small JSON documents are kept (16 MiB
//! each at most). Then the manifest says which layers, in which order, and
//! which config.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::blobs::{copy_hashing, digest_hex, BlobCache};
use crate::defaults::ImageDefaults;
use crate::error::{io_err, ImageError, Result};
use crate::Layer;

/// JSON documents larger than this are not manifests or configs.
const MAX_JSON: u64 = 16 << 20;

/// What an archive holds, ready for [`crate::layers::apply_layer`].
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// The config blob's digest: the image's identity.
    pub digest: String,
    /// What the image's config gives exec and shell (user, env, workdir …).
    pub defaults: ImageDefaults,
    /// The layer blobs, bottom first.
    pub layers: Vec<Layer>,
}

fn bad(detail: impl Into<String>) -> ImageError {
    ImageError::Archive(detail.into())
}

/// `a/./b/../c` → `a/c`, relative; `None` if it climbs out.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
}

/// Reads an image tarball into the cache (see the module doc).
pub fn read_archive(tarball: &Path, cache: &BlobCache) -> Result<Unpacked> {
    let f = File::open(tarball).map_err(io_err(format!("open {}", tarball.display())))?;
    if f.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(bad("the tarball is empty"));
    }
    let mut ar = tar::Archive::new(BufReader::with_capacity(256 * 1024, f));
    // Entry path → digest of what was stored for it.
    let mut blobs: HashMap<PathBuf, String> = HashMap::new();
    let mut json: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    let entries = ar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut any = false;
    for entry in entries {
        let mut e = entry.map_err(|e| bad(format!("corrupt or truncated: {e}")))?;
        any = true;
        let raw = e
            .path()
            .map_err(|e| bad(format!("entry path: {e}")))?
            .into_owned();
        let Some(path) = normalize(&raw) else {
            return Err(bad(format!("{}: path leaves the archive", raw.display())));
        };
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            // Classic `docker save` links a repeated layer to its first copy.
            if let Some(target) = e.link_name().ok().flatten() {
                let base = if kind.is_symlink() {
                    path.parent().unwrap_or(Path::new("")).join(target)
                } else {
                    target.to_path_buf()
                };
                if let Some(t) = normalize(&base) {
                    links.insert(path, t);
                }
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let name = path.to_string_lossy();
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            digest_hex(&digest)?;
            if e.size() <= MAX_JSON && !cache.contains(&digest) {
                // Manifests and configs are blobs too; keep the small ones
                // readable as well as cached.
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                cache.put_reader(&mut &buf[..], &digest)?;
                json.insert(path.clone(), buf);
            } else if !cache.contains(&digest) {
                cache.put_reader(&mut e, &digest)?;
            }
            blobs.insert(path, digest);
        } else if name.ends_with(".json") || name == "oci-layout" {
            if e.size() > MAX_JSON {
                return Err(bad(format!(
                    "{name}: {} bytes is too large for a manifest",
                    e.size()
                )));
            }
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            json.insert(path, buf);
        } else {
            // Classic layout: `<id>/layer.tar`, digest unknown until hashed.
            let tmp = cache.temp_path();
            let stored = (|| {
                let mut out =
                    File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
                let (digest, _) =
                    copy_hashing(&mut e, &mut out).map_err(|e| bad(format!("{name}: {e}")))?;
                if cache.contains(&digest) {
                    let _ = std::fs::remove_file(&tmp);
                } else {
                    cache.commit(&tmp, &digest)?;
                }
                Ok(digest)
            })();
            match stored {
                Ok(d) => {
                    blobs.insert(path, d);
                }
                Err(err) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(err);
                }
            }
        }
    }
    if !any {
        return Err(bad("the tarball has no entries"));
    }
    let resolve = |p: &Path| -> Option<PathBuf> {
        let mut p = normalize(p)?;
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p = t.clone(),
                None => return Some(p),
            }
        }
        None
    };
    let blob_digest = |p: &str| -> Result<String> {
        resolve(Path::new(p))
            .and_then(|p| blobs.get(&p).cloned())
            .ok_or_else(|| bad(format!("the manifest names {p}, which the archive lacks")))
    };
    let doc = |p: &Path| -> Result<&[u8]> {
        json.get(p)
            .map(|v| &v[..])
            .ok_or_else(|| bad(format!("the archive lacks {}", p.display())))
    };

    let (config_json, config_digest, layer_digests) =
        if let Some(m) = json.get(Path::new("manifest.json")) {
            let ms: Vec<DockerManifest> =
                serde_json::from_slice(m).map_err(|e| bad(format!("manifest.json: {e}")))?;
            let m = match ms.as_slice() {
                [m] => m,
                [] => return Err(bad("manifest.json lists no image")),
                _ => {
                    return Err(bad(
                        "manifest.json lists several images; import one at a time",
                    ))
                }
            };
            let cfg_path = resolve(Path::new(&m.config)).ok_or_else(|| bad("bad config path"))?;
            let cfg = doc(&cfg_path)?.to_vec();
            let digest = match blobs.get(&cfg_path) {
                Some(d) => d.clone(),
                None => {
                    let (d, _) = copy_hashing(&mut &cfg[..], &mut std::io::sink())
                        .map_err(|e| bad(e.to_string()))?;
                    d
                }
            };
            let layers = m
                .layers
                .iter()
                .map(|l| blob_digest(l))
                .collect::<Result<Vec<_>>>()?;
            (cfg, digest, layers)
        } else if let Some(ix) = json.get(Path::new("index.json")) {
            let ix: OciIndex =
                serde_json::from_slice(ix).map_err(|e| bad(format!("index.json: {e}")))?;
            let pick = ix
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                })
                .or_else(|| ix.manifests.iter().find(|d| d.platform.is_none()))
                .ok_or_else(|| ImageError::Platform("the archive's index.json".into()))?;
            let mpath = PathBuf::from(format!("blobs/sha256/{}", digest_hex(&pick.digest)?));
            let m: OciManifest = serde_json::from_slice(doc(&mpath)?)
                .map_err(|e| bad(format!("manifest {}: {e}", pick.digest)))?;
            if m.media_type.as_deref().is_some_and(|t| t.contains("index")) {
                return Err(bad(
                    "nested image indexes are not supported; export one platform",
                ));
            }
            let cpath = PathBuf::from(format!("blobs/sha256/{}", digest_hex(&m.config.digest)?));
            let cfg = doc(&cpath)?.to_vec();
            let layers = m
                .layers
                .iter()
                .map(|l| {
                    digest_hex(&l.digest)?;
                    if cache.contains(&l.digest) {
                        Ok(l.digest.clone())
                    } else {
                        Err(bad(format!(
                            "the manifest names layer {}, which the archive lacks",
                            l.digest
                        )))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            (cfg, m.config.digest.clone(), layers)
        } else {
            return Err(bad(
                "neither manifest.json (docker save) nor index.json (OCI layout) in the tarball",
            ));
        };
    let layers = layer_digests
        .into_iter()
        .map(|d| {
            Ok(Layer {
                path: cache.path(&d)?,
                digest: d,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Unpacked {
        digest: config_digest,
        defaults: ImageDefaults::from_config_json(&config_json),
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    }

    fn layer(file: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, file, data);
        b.into_inner().unwrap()
    }

    #[test]
    fn classic_docker_save_with_a_linked_layer_reads() {
        let d = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(d.path().join("blobs")).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "aaa/layer.tar", &layer("f", b"1"));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "bbb/layer.tar", "../aaa/layer.tar")
            .unwrap();
        add(
            &mut b,
            "cfg.json",
            br#"{"config":{"Env":["A=1"],"WorkingDir":"/w"}}"#,
        );
        add(&mut b, "manifest.json", br#"[{"Config":"cfg.json","RepoTags":["x:1"],"Layers":["aaa/layer.tar","bbb/layer.tar"]}]"#);
        let tarball = d.path().join("img.tar");
        std::fs::write(&tarball, b.into_inner().unwrap()).unwrap();
        let u = read_archive(&tarball, &cache).unwrap();
        assert_eq!(u.layers.len(), 2);
        assert_eq!(u.layers[0], u.layers[1]);
        assert_eq!(u.defaults.env["A"], "1");
        assert_eq!(u.defaults.working_dir, "/w");
    }

    #[test]
    fn bad_archives_are_typed_errors() {
        let d = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(d.path().join("blobs")).unwrap();
        let write = |name: &str, bytes: Vec<u8>| {
            let p = d.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let empty = write("empty.tar", vec![]);
        let garbage = write(
            "garbage.tar",
            b"this is not a tar archive at all".repeat(40),
        );
        let no_manifest = {
            let mut b = tar::Builder::new(Vec::new());
            add(&mut b, "x/layer.tar", &layer("f", b"1"));
            write("nomanifest.tar", b.into_inner().unwrap())
        };
        let missing_layer = {
            let mut b = tar::Builder::new(Vec::new());
            add(&mut b, "c.json", b"{}");
            add(
                &mut b,
                "manifest.json",
                br#"[{"Config":"c.json","Layers":["gone/layer.tar"]}]"#,
            );
            write("missing.tar", b.into_inner().unwrap())
        };
        let wrong_digest = {
            let mut b = tar::Builder::new(Vec::new());
            add(
                &mut b,
                &format!("blobs/sha256/{}", "0".repeat(64)),
                b"not that",
            );
            write("digest.tar", b.into_inner().unwrap())
        };
        for (what, p) in [
            ("empty", &empty),
            ("garbage", &garbage),
            ("no manifest", &no_manifest),
            ("missing layer", &missing_layer),
            ("wrong digest", &wrong_digest),
        ] {
            let e = read_archive(p, &cache).expect_err(what);
            assert!(e.is_bad_input(), "{what}: {e}");
        }
        assert_eq!(
            std::fs::read_dir(d.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0,
            "no temp left"
        );
    }
}
