//! Templates: per-user presets for sandbox creation (docs/decisions.md,
//! "Store" — the reference's templates were global).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_int, get_json, to_json};
use crate::error::{insert_err, Result, StoreError};
use crate::{ids, query_all, query_opt, time, to_sql_int, Store};

/// A template row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// Empty on create = generate one (16 hex).
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    /// Owner; set by the store from the caller.
    pub user_id: String,
    /// Unique per owner.
    pub name: String,
    #[serde(default)]
    /// Root-filesystem image name; empty = the default.
    pub image: String,
    /// Whole vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    #[serde(default)]
    /// Root-disk size in MiB; 0 = the image's own size.
    pub disk_size_mb: u64,
    #[serde(default)]
    /// Environment variables for the guest, name → value.
    pub env: BTreeMap<String, String>,
    /// Names of the user's secrets to inject.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Files to place in the guest (shape owned by the API layer).
    #[serde(default = "empty_array")]
    pub files: serde_json::Value,
    /// Persistent volumes to attach (shape owned by the API layer; the
    /// reference's `mounts`).
    #[serde(default = "empty_array")]
    pub volumes: serde_json::Value,
    #[serde(default)]
    /// Command run at first boot; empty = none.
    pub init: String,
    #[serde(default)]
    /// Labels given to sandboxes created from it.
    pub labels: BTreeMap<String, String>,
    /// Set by the store.
    #[serde(default)]
    pub created_at: String,
}

fn empty_array() -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}

impl Default for Template {
    fn default() -> Self {
        Template {
            id: String::new(),
            user_id: String::new(),
            name: String::new(),
            image: String::new(),
            cpus: 1,
            memory_mb: 2048,
            disk_size_mb: 0,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            files: empty_array(),
            volumes: empty_array(),
            init: String::new(),
            labels: BTreeMap::new(),
            created_at: String::new(),
        }
    }
}

const COLS: &str = "id, user_id, name, image, cpus, memory_mb, disk_size_mb, env, secrets, \
    files, volumes, init, labels, created_at";

fn map_template(r: &Row<'_>) -> Result<Template> {
    Ok(Template {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        name: r.get("name")?,
        image: r.get("image")?,
        cpus: get_int(r, "cpus")?,
        memory_mb: get_int(r, "memory_mb")?,
        disk_size_mb: get_int(r, "disk_size_mb")?,
        env: get_json(r, "env")?,
        secrets: get_json(r, "secrets")?,
        files: get_json(r, "files")?,
        volumes: get_json(r, "volumes")?,
        init: r.get("init")?,
        labels: get_json(r, "labels")?,
        created_at: r.get("created_at")?,
    })
}

fn find(c: &Connection, user_id: &str, id_or_name: &str) -> Result<Option<Template>> {
    for col in ["id", "name"] {
        let t = query_opt(
            c,
            &format!("SELECT {COLS} FROM templates WHERE user_id = ?1 AND {col} = ?2"),
            [user_id, id_or_name],
            map_template,
        )?;
        if t.is_some() {
            return Ok(t);
        }
    }
    Ok(None)
}

fn name_conflict(name: &str) -> impl FnOnce(&str) -> String + '_ {
    move |detail| {
        if detail.contains("templates.name") {
            format!("template {name:?} already exists")
        } else {
            format!("template already exists ({detail})")
        }
    }
}

impl Store {
    /// Creates a template owned by `t.user_id`; an empty `t.id` gets a
    /// generated one. A name the user already uses is `Conflict`.
    pub fn create_template(&self, t: &Template) -> Result<Template> {
        if t.name.is_empty() || t.user_id.is_empty() {
            return Err(StoreError::Invalid(
                "template name and owner are required".into(),
            ));
        }
        let id = if t.id.is_empty() {
            ids::row_id()
        } else {
            t.id.clone()
        };
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO templates ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)"),
                params![
                    id,
                    t.user_id,
                    t.name,
                    t.image,
                    t.cpus,
                    t.memory_mb,
                    to_sql_int(t.disk_size_mb, "disk_size_mb")?,
                    to_json(&t.env, "env")?,
                    to_json(&t.secrets, "secrets")?,
                    to_json(&t.files, "files")?,
                    to_json(&t.volumes, "volumes")?,
                    t.init,
                    to_json(&t.labels, "labels")?,
                    time::now(),
                ],
            )
            .map_err(|e| insert_err(e, name_conflict(&t.name)))?;
            find(tx, &t.user_id, &id)?.ok_or(StoreError::NotFound)
        })
    }

    /// One of the user's templates by ID (first) or name.
    pub fn template(&self, user_id: &str, id_or_name: &str) -> Result<Template> {
        self.read(|c| find(c, user_id, id_or_name)?.ok_or(StoreError::NotFound))
    }

    /// The user's templates, by name.
    pub fn list_templates(&self, user_id: &str) -> Result<Vec<Template>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM templates WHERE user_id = ?1 ORDER BY name"),
                [user_id],
                map_template,
            )
        })
    }

    /// Replaces every field of the user's template `t.id` except `id`,
    /// `user_id` and `created_at`.
    pub fn update_template(&self, t: &Template) -> Result<Template> {
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE templates SET name = ?3, image = ?4, cpus = ?5, memory_mb = ?6, \
                     disk_size_mb = ?7, env = ?8, secrets = ?9, files = ?10, volumes = ?11, \
                     init = ?12, labels = ?13 WHERE id = ?1 AND user_id = ?2",
                    params![
                        t.id,
                        t.user_id,
                        t.name,
                        t.image,
                        t.cpus,
                        t.memory_mb,
                        to_sql_int(t.disk_size_mb, "disk_size_mb")?,
                        to_json(&t.env, "env")?,
                        to_json(&t.secrets, "secrets")?,
                        to_json(&t.files, "files")?,
                        to_json(&t.volumes, "volumes")?,
                        t.init,
                        to_json(&t.labels, "labels")?,
                    ],
                )
                .map_err(|e| insert_err(e, name_conflict(&t.name)))?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            find(tx, &t.user_id, &t.id)?.ok_or(StoreError::NotFound)
        })
    }

    /// Deletes one of the user's templates by ID (first) or name; returns it.
    pub fn delete_template(&self, user_id: &str, id_or_name: &str) -> Result<Template> {
        self.write(|tx| {
            let t = find(tx, user_id, id_or_name)?.ok_or(StoreError::NotFound)?;
            tx.execute("DELETE FROM templates WHERE id = ?1", [&t.id])?;
            Ok(t)
        })
    }
}
