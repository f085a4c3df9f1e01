//! Store tests against real SQLite files in temporary directories.
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bhatti_store::migrations::{self, Migration};
use bhatti_store::{
    coerce, ids, time, EventQuery, NewEvent, NewImage, NewSandbox, NewSnapshot, NewUser, NewVolume,
    Quotas, Sandbox, SandboxStatus, Store, StoreError, Template, User, VolumeStatus, ADMIN_USER,
};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::json;
use tempfile::TempDir;

fn db() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    (dir, path)
}

fn open() -> (TempDir, Store) {
    let (dir, path) = db();
    let s = Store::open(&path).unwrap();
    (dir, s)
}

fn user(s: &Store, name: &str) -> User {
    s.create_user(&NewUser {
        name: name.into(),
        quotas: Quotas::default(),
    })
    .unwrap()
    .0
}

fn sandbox(s: &Store, u: &User, name: &str) -> Sandbox {
    s.insert_sandbox(&NewSandbox {
        id: ids::sandbox_id(),
        user_id: u.id.clone(),
        name: name.into(),
        engine: "qemu".into(),
        ..Default::default()
    })
    .unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn volume(s: &Store, u: &User, name: &str, size_mb: u64) -> bhatti_store::Volume {
    s.create_volume(&NewVolume {
        user_id: u.id.clone(),
        name: name.into(),
        size_mb,
        file_path: format!("/data/volumes/{}/{name}.ext4", u.id),
        status: VolumeStatus::Ready,
    })
    .unwrap()
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn is_conflict(e: &StoreError, needle: &str) -> bool {
    matches!(e, StoreError::Conflict(m) | StoreError::Exists(m) if m.contains(needle))
}

// ---------------------------------------------------------------- schema

#[test]
fn migrations_run_once() {
    let (_d, path) = db();
    let s = Store::open(&path).unwrap();
    assert_eq!(s.migrations_applied(), migrations::MIGRATIONS.len());
    assert_eq!(s.schema_version().unwrap(), migrations::latest());
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.migrations_applied(), 0, "re-open must not migrate again");
    assert_eq!(s.schema_version().unwrap(), migrations::latest());
}

#[test]
fn old_database_is_upgraded_keeping_data() {
    let (_d, path) = db();
    {
        let mut c = raw(&path);
        let n = migrations::run_to(&mut c, migrations::MIGRATIONS, 1).unwrap();
        assert_eq!(n, 1);
        c.execute(
            "INSERT INTO users (id, name, api_key_hash, subnet_index, created_at) \
             VALUES ('usr_0000abcd', 'old', 'h', 1, '2024-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
        // Tables of later steps do not exist yet.
        let later: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('volumes', 'events')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(later, 0);
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.migrations_applied(), migrations::MIGRATIONS.len() - 1);
    assert_eq!(s.schema_version().unwrap(), migrations::latest());
    let u = s.user_by_name("old").unwrap();
    assert_eq!(u.id, "usr_0000abcd");
    assert_eq!(u.quotas, Quotas::default(), "defaults filled by the schema");
    // Later tables work.
    volume(&s, &u, "data", 10);
    s.record_event(&NewEvent::new("daemon.started")).unwrap();
}

/// The step that rebuilds `sandboxes` (to allow `crashed`) keeps every
/// row, and the publish rules that reference them, intact.
#[test]
fn sandboxes_rebuild_keeps_rows_and_references() {
    let (_d, path) = db();
    let before = migrations::MIGRATIONS
        .iter()
        .position(|m| m.rebuilds)
        .expect("a rebuilding step") as u32;
    {
        let mut c = raw(&path);
        migrations::run_to(&mut c, migrations::MIGRATIONS, before).unwrap();
        c.execute_batch(
            "INSERT INTO users (id, name, api_key_hash, subnet_index, created_at) \
               VALUES ('usr_0000abcd', 'old', 'h', 1, '2024-01-01T00:00:00.000Z');
             INSERT INTO sandboxes (id, user_id, name, status, status_reason, created_at, metadata) \
               VALUES ('00000000000000aa', 'usr_0000abcd', 'keep', 'stopped', 'why', \
                       '2024-01-01T00:00:00.000Z', '{\"k\":\"v\"}');
             INSERT INTO publish_rules (id, sandbox_id, user_id, port, alias, created_at) \
               VALUES ('pub_1', '00000000000000aa', 'usr_0000abcd', 8080, 'keep-app', \
                       '2024-01-01T00:00:00.000Z');",
        )
        .unwrap();
        assert!(
            c.execute("UPDATE sandboxes SET status = 'crashed'", [])
                .is_err(),
            "the old schema refuses the new status"
        );
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), migrations::latest());
    let sb = s.sandbox_by_id("00000000000000aa").unwrap();
    assert_eq!(
        (sb.name.as_str(), sb.status),
        ("keep", SandboxStatus::Stopped)
    );
    assert_eq!(sb.status_reason, "why");
    s.set_status(&sb.id, SandboxStatus::Crashed, "the VMM was killed")
        .unwrap();
    let sb = s.sandbox_by_id(&sb.id).unwrap();
    assert_eq!(sb.status, SandboxStatus::Crashed);
    let c = raw(&path);
    let rules: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM publish_rules WHERE sandbox_id = '00000000000000aa'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rules, 1, "the rule still references its sandbox");
    let broken: i64 = c
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(broken, 0);
}

#[test]
fn failed_migration_leaves_previous_version() {
    let (_d, path) = db();
    let mut c = raw(&path);
    let steps = [
        Migration {
            name: "good",
            rebuilds: false,
            sql: "CREATE TABLE a (x INTEGER);",
        },
        Migration {
            name: "bad",
            rebuilds: false,
            sql: "CREATE TABLE b (x INTEGER); INSERT INTO missing VALUES (1);",
        },
    ];
    let e = migrations::run(&mut c, &steps).unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("migration 2 (bad)")),
        "{e}"
    );
    assert_eq!(migrations::version(&c).unwrap(), 1);
    c.execute("INSERT INTO a VALUES (1)", []).unwrap();
    assert!(
        c.execute("INSERT INTO b VALUES (1)", []).is_err(),
        "the failed step's first statement was rolled back"
    );
}

#[test]
fn newer_database_is_refused() {
    let (_d, path) = db();
    raw(&path)
        .pragma_update(None, "user_version", migrations::latest() + 1)
        .unwrap();
    let e = Store::open(&path).unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("newer")),
        "{e}"
    );
}

#[test]
fn wal_mode_permissions_and_foreign_keys() {
    let (_d, path) = db();
    let s = Store::open(&path).unwrap();
    assert_eq!(s.journal_mode().unwrap(), "wal");
    let u = user(&s, "alice");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(wal.exists(), "WAL file in use");
    assert_eq!(mode(&wal), 0o600);
    // Foreign keys are enforced: a secret for a missing user is refused.
    assert!(matches!(
        s.set_secret("usr_missing0", "X", b"v"),
        Err(StoreError::NotFound)
    ));
    s.set_secret(&u.id, "X", b"v").unwrap();

    // An existing, too-open file is tightened.
    drop(s);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _s = Store::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

// ----------------------------------------------------------------- users

#[test]
fn users_keys_rotation_and_lookup() {
    let (_d, s) = open();
    let (u, key) = s
        .create_user(&NewUser {
            name: "alice".into(),
            quotas: Quotas {
                max_sandboxes: 7,
                ..Quotas::default()
            },
        })
        .unwrap();
    assert!(u.id.starts_with("usr_") && u.id.len() == 12);
    assert!(key.starts_with("bht_") && key.len() == 68);
    assert_eq!(u.api_key_hash, ids::hash_token(&key));
    assert_eq!(u.quotas.max_sandboxes, 7);
    assert_eq!(u.quotas.max_images, 10);
    assert!(
        !serde_json::to_string(&u).unwrap().contains(&u.api_key_hash),
        "hash never serialized"
    );

    assert_eq!(s.user_by_api_key(&key).unwrap().id, u.id);
    assert_eq!(s.user_by_name("alice").unwrap(), u);
    assert_eq!(s.user(&u.id).unwrap(), u);
    assert!(matches!(
        s.user_by_api_key("bht_nope"),
        Err(StoreError::NotFound)
    ));

    let e = s
        .create_user(&NewUser {
            name: "alice".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(is_conflict(&e, "already exists"), "{e}");

    let new_key = s.rotate_api_key(&u.id).unwrap();
    assert_ne!(new_key, key);
    assert!(matches!(s.user_by_api_key(&key), Err(StoreError::NotFound)));
    assert_eq!(s.user_by_api_key(&new_key).unwrap().id, u.id);
    assert!(matches!(
        s.rotate_api_key("usr_nothere"),
        Err(StoreError::NotFound)
    ));

    let q = Quotas {
        max_snapshots: 9,
        ..u.quotas
    };
    assert_eq!(s.set_quotas(&u.id, &q).unwrap().quotas.max_snapshots, 9);
    user(&s, "bob");
    let names: Vec<_> = s
        .list_users()
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[test]
fn user_delete_refused_while_owning_sandboxes_or_secrets() {
    let (_d, s) = open();
    let u = user(&s, "alice");
    let sb = sandbox(&s, &u, "web");
    let e = s.delete_user(&u.id).unwrap_err();
    assert!(is_conflict(&e, "1 sandbox(es)"), "{e}");
    s.delete_sandbox(&sb.id).unwrap();

    s.set_secret(&u.id, "TOKEN", b"enc").unwrap();
    let e = s.delete_user(&u.id).unwrap_err();
    assert!(is_conflict(&e, "1 secret(s)"), "{e}");
    s.delete_secret(&u.id, "TOKEN").unwrap();

    // Other belongings go with the user; their files are reported.
    let v = volume(&s, &u, "data", 100);
    s.attach_volume(&v.id, "0123456789abcdef", "/data", false)
        .unwrap();
    s.create_template(&Template {
        user_id: u.id.clone(),
        name: "t".into(),
        ..Default::default()
    })
    .unwrap();
    s.create_snapshot(&NewSnapshot {
        user_id: u.id.clone(),
        name: "cp".into(),
        dir: "/data/snapshots/x/cp".into(),
        ..Default::default()
    })
    .unwrap();
    let removal = s.delete_user(&u.id).unwrap();
    assert_eq!(removal.volume_files, [v.file_path]);
    assert_eq!(removal.snapshot_dirs, ["/data/snapshots/x/cp"]);
    assert!(matches!(s.user(&u.id), Err(StoreError::NotFound)));
    assert!(s.list_templates(&u.id).unwrap().is_empty());
    assert!(matches!(s.delete_user(&u.id), Err(StoreError::NotFound)));
}

#[test]
fn subnet_indexes_unique_and_increasing() {
    let (_d, s) = open();
    let idx: Vec<u16> = (0..6)
        .map(|i| user(&s, &format!("u{i}")).subnet_index)
        .collect();
    assert_eq!(idx, [1, 2, 3, 4, 5, 6]);
    // max + 1: deleting a middle user does not make a lower index reused.
    let u2 = s.user_by_name("u1").unwrap();
    s.delete_user(&u2.id).unwrap();
    assert_eq!(user(&s, "next").subnet_index, 7);
    let mut all: Vec<u16> = s
        .list_users()
        .unwrap()
        .iter()
        .map(|u| u.subnet_index)
        .collect();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n);
}

// ------------------------------------------------------------- sandboxes

#[test]
fn sandbox_lookup_is_scoped_to_the_user() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let b = user(&s, "b");
    let web = sandbox(&s, &a, "web");
    assert_eq!(web.status, SandboxStatus::Running);
    assert_eq!(
        (web.cpus, web.memory_mb, web.image.as_str()),
        (1, 1024, "minimal")
    );

    assert_eq!(s.sandbox(&a.id, &web.id).unwrap(), web);
    assert_eq!(s.sandbox(&a.id, "web").unwrap(), web);
    assert!(matches!(
        s.sandbox(&b.id, &web.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(s.sandbox(&b.id, "web"), Err(StoreError::NotFound)));
    assert_eq!(s.sandbox_by_id(&web.id).unwrap(), web);

    // B may use the same name.
    let bweb = sandbox(&s, &b, "web");
    assert_eq!(s.sandbox(&b.id, "web").unwrap().id, bweb.id);
    assert_eq!(s.sandbox(&a.id, "web").unwrap().id, web.id);

    // ID match wins over a name match.
    let tricky = sandbox(&s, &a, &web.id);
    assert_eq!(s.sandbox(&a.id, &web.id).unwrap().id, web.id);
    assert_eq!(s.sandbox(&a.id, &tricky.id).unwrap().id, tricky.id);

    // Newest first.
    let names: Vec<_> = s
        .list_sandboxes(&a.id, &BTreeMap::new())
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(names, [tricky.id.clone(), web.id.clone()]);
    assert_eq!(s.count_active_sandboxes(&a.id).unwrap(), 2);
    assert_eq!(s.list_all_sandboxes().unwrap().len(), 3);
}

#[test]
fn active_name_unique_rename_conflict_and_quota() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let web = sandbox(&s, &a, "web");
    let e = s
        .insert_sandbox(&NewSandbox {
            id: ids::sandbox_id(),
            user_id: a.id.clone(),
            name: "web".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(is_conflict(&e, r#"name "web" is already in use"#), "{e}");
    // A taken name is its own variant, so callers never read the words.
    assert!(matches!(e, StoreError::Exists(_)), "{e:?}");

    let db = sandbox(&s, &a, "db");
    let e = s.rename_sandbox(&db.id, "web").unwrap_err();
    assert!(is_conflict(&e, r#"name "web" is already in use"#), "{e}");
    assert_eq!(s.rename_sandbox(&db.id, "db2").unwrap().name, "db2");
    assert!(matches!(
        s.rename_sandbox("nope", "x"),
        Err(StoreError::NotFound)
    ));

    // After a destroy the name is free again.
    s.delete_sandbox(&web.id).unwrap();
    sandbox(&s, &a, "web");

    // max_sandboxes (5) is enforced at insert.
    for i in 0..3 {
        sandbox(&s, &a, &format!("s{i}"));
    }
    let e = s
        .insert_sandbox(&NewSandbox {
            id: ids::sandbox_id(),
            user_id: a.id.clone(),
            name: "sixth".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Quota(m) if m == "sandbox limit reached (5/5)"),
        "{e}"
    );
}

#[test]
fn label_filter_is_and_and_merge_is_transactional() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let mk = |name: &str, l: &[(&str, &str)]| {
        s.insert_sandbox(&NewSandbox {
            id: ids::sandbox_id(),
            user_id: a.id.clone(),
            name: name.into(),
            labels: labels(l),
            ..Default::default()
        })
        .unwrap()
    };
    mk("one", &[("env", "prod"), ("team", "x")]);
    mk("two", &[("env", "prod"), ("team", "y")]);
    let three = mk("three", &[("env", "dev")]);
    let names = |f: &[(&str, &str)]| -> Vec<String> {
        let mut v: Vec<_> = s
            .list_sandboxes(&a.id, &labels(f))
            .unwrap()
            .into_iter()
            .map(|x| x.name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&[("env", "prod")]), ["one", "two"]);
    assert_eq!(names(&[("env", "prod"), ("team", "y")]), ["two"]);
    assert!(names(&[("env", "dev"), ("team", "x")]).is_empty());
    assert_eq!(names(&[]).len(), 3);

    let t = s
        .update_labels(
            &three.id,
            &labels(&[("team", "z"), ("env", "stage")]),
            &["nothere".into()],
        )
        .unwrap();
    assert_eq!(t.labels, labels(&[("env", "stage"), ("team", "z")]));
    let t = s
        .update_labels(&three.id, &BTreeMap::new(), &["env".into()])
        .unwrap();
    assert_eq!(t.labels, labels(&[("team", "z")]));

    let many: BTreeMap<String, String> = (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
    let e = s.update_labels(&three.id, &many, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Invalid(_)));
    assert_eq!(
        s.sandbox_by_id(&three.id).unwrap().labels,
        labels(&[("team", "z")])
    );
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum EngStatus {
    Running,
    Stopped,
    Unknown,
}

/// Mirrors the engine's `VmState` (crates/engine/src/contract/types.rs).
#[derive(Debug, Deserialize, PartialEq)]
struct VmState {
    engine: String,
    id: String,
    name: String,
    status: EngStatus,
    generation: u64,
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Detail {
    cpus: u32,
    memory_mb: u32,
}

#[test]
fn runtime_updates_status_vm_state_and_generation() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let sb = sandbox(&s, &a, "web");
    assert!(sb.vm_state_as::<VmState>().unwrap().is_none());

    let st = s.set_status(&sb.id, SandboxStatus::Stopped, "").unwrap();
    assert_eq!(st.status, SandboxStatus::Stopped);
    assert!(st.stopped_at.is_some());
    let st = s
        .set_status(&sb.id, SandboxStatus::Unknown, "restore failed")
        .unwrap();
    assert_eq!(st.status_reason, "restore failed");
    assert!(st.stopped_at.is_some(), "unknown keeps stopped_at");
    let st = s.set_status(&sb.id, SandboxStatus::Running, "").unwrap();
    assert!(st.stopped_at.is_none() && st.status_reason.is_empty());
    assert_eq!(s.set_ip(&sb.id, "10.0.1.2").unwrap().ip, "10.0.1.2");
    assert!(s.set_keep_hot(&sb.id, true).unwrap().keep_hot);
    let h = s
        .set_shell_token_hash(&sb.id, Some(("abc", "2030-01-01T00:00:00.000Z")))
        .unwrap();
    assert_eq!(h.shell_token_hash.as_deref(), Some("abc"));
    assert_eq!(
        h.shell_token_expires_at.as_deref(),
        Some("2030-01-01T00:00:00.000Z")
    );
    assert!(!serde_json::to_string(&h).unwrap().contains("abc"));
    let cleared = s.set_shell_token_hash(&sb.id, None).unwrap();
    assert!(cleared.shell_token_hash.is_none() && cleared.shell_token_expires_at.is_none());

    let state = json!({"engine":"qemu","id":sb.id,"name":"web","status":"running","generation":2,
                       "detail":{"cpus":1,"memory_mb":1024}});
    let row = s.save_vm_state(&sb.id, &state, 2).unwrap();
    assert_eq!(row.generation, 2);
    let vs: VmState = row.vm_state_as().unwrap().unwrap();
    assert_eq!(vs.generation, 2);
    assert_eq!(vs.status, EngStatus::Running);
    // Same generation may be re-saved; an older one is refused.
    s.save_vm_state(&sb.id, &state, 2).unwrap();
    let e = s.save_vm_state(&sb.id, &state, 1).unwrap_err();
    assert!(is_conflict(&e, "stale"), "{e}");
    assert_eq!(s.sandbox_by_id(&sb.id).unwrap().generation, 2);
    assert!(matches!(
        s.set_status("0000000000000000", SandboxStatus::Running, ""),
        Err(StoreError::NotFound)
    ));
}

// --------------------------------------------------------------- secrets

#[test]
fn secrets_upsert_list_delete_per_user() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let b = user(&s, "b");
    let first = s.set_secret(&a.id, "TOKEN", b"enc-1").unwrap();
    s.set_secret(&a.id, "API", b"enc-2").unwrap();
    s.set_secret(&b.id, "TOKEN", b"enc-b").unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let again = s.set_secret(&a.id, "TOKEN", b"enc-3").unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert!(again.updated_at > first.updated_at);

    let names: Vec<_> = s
        .list_secrets(&a.id)
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["API", "TOKEN"]);
    assert_eq!(s.secret_value(&a.id, "TOKEN").unwrap(), b"enc-3");
    assert_eq!(s.secret_value(&b.id, "TOKEN").unwrap(), b"enc-b");
    assert!(matches!(
        s.secret_value(&b.id, "API"),
        Err(StoreError::NotFound)
    ));

    s.delete_secret(&a.id, "TOKEN").unwrap();
    assert!(matches!(
        s.delete_secret(&a.id, "TOKEN"),
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.secret_value(&b.id, "TOKEN").unwrap(), b"enc-b");
}

// ------------------------------------------------------------- templates

#[test]
fn templates_are_per_user() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let b = user(&s, "b");
    let t = s
        .create_template(&Template {
            user_id: a.id.clone(),
            name: "py".into(),
            image: "python".into(),
            cpus: 2,
            env: labels(&[("A", "1")]),
            secrets: vec!["TOKEN".into()],
            files: json!([{"guest_path": "/x", "content": "aGk=", "mode": "0644"}]),
            volumes: json!([{"name": "data", "mount": "/data", "size_mb": 100}]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(t.id.len(), 16);
    assert_eq!(s.template(&a.id, "py").unwrap(), t);
    assert_eq!(s.template(&a.id, &t.id).unwrap(), t);
    assert!(matches!(
        s.template(&b.id, &t.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(s.template(&b.id, "py"), Err(StoreError::NotFound)));

    let dup = Template {
        user_id: a.id.clone(),
        name: "py".into(),
        ..Default::default()
    };
    assert!(is_conflict(
        &s.create_template(&dup).unwrap_err(),
        "already exists"
    ));
    // B can have its own "py".
    s.create_template(&Template {
        user_id: b.id.clone(),
        ..dup
    })
    .unwrap();

    let mut t2 = t.clone();
    t2.memory_mb = 4096;
    t2.name = "python".into();
    let t2 = s.update_template(&t2).unwrap();
    assert_eq!(
        (t2.memory_mb, t2.created_at.as_str()),
        (4096, t.created_at.as_str())
    );
    assert_eq!(s.list_templates(&a.id).unwrap().len(), 1);
    s.delete_template(&a.id, "python").unwrap();
    assert!(s.list_templates(&a.id).unwrap().is_empty());
    assert_eq!(s.list_templates(&b.id).unwrap().len(), 1);
}

// --------------------------------------------------------------- volumes

#[test]
fn volume_attach_rules() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let v = volume(&s, &a, "data", 1024);
    let (s1, s2, s3) = ("1111111111111111", "2222222222222222", "3333333333333333");

    // RW is exclusive.
    let att = s.attach_volume(&v.id, s1, "/data", false).unwrap();
    assert_eq!((att.volume_name.as_str(), att.read_only), ("data", false));
    assert!(is_conflict(
        &s.attach_volume(&v.id, s2, "/data", false).unwrap_err(),
        "exclusive"
    ));
    assert!(is_conflict(
        &s.attach_volume(&v.id, s2, "/data", true).unwrap_err(),
        "read-write"
    ));
    assert!(is_conflict(
        &s.attach_volume(&v.id, s1, "/d2", true).unwrap_err(),
        "already attached"
    ));
    s.detach_volume(&v.id, s1).unwrap();
    assert!(matches!(
        s.detach_volume(&v.id, s1),
        Err(StoreError::NotFound)
    ));

    // RO is shared, and blocks RW.
    s.attach_volume(&v.id, s1, "/data", true).unwrap();
    s.attach_volume(&v.id, s2, "/data", true).unwrap();
    assert!(is_conflict(
        &s.attach_volume(&v.id, s3, "/data", false).unwrap_err(),
        "exclusive"
    ));
    assert_eq!(s.volume_attachments(&v.id).unwrap().len(), 2);

    // Delete and resize are refused while attached.
    assert!(is_conflict(
        &s.delete_volume(&a.id, "data").unwrap_err(),
        "attached"
    ));
    assert!(is_conflict(
        &s.resize_volume(&v.id, 2048).unwrap_err(),
        "attached"
    ));
    assert_eq!(s.detach_all(s1).unwrap().len(), 1);
    assert_eq!(s.sandbox_attachments(s2).unwrap().len(), 1);
    s.detach_all(s2).unwrap();
    assert!(matches!(
        s.resize_volume(&v.id, 512),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.resize_volume(&v.id, 2048).unwrap().size_mb, 2048);

    // A volume still being created cannot be attached.
    let c = s
        .create_volume(&NewVolume {
            user_id: a.id.clone(),
            name: "new".into(),
            size_mb: 10,
            file_path: "/x".into(),
            status: VolumeStatus::Creating,
        })
        .unwrap();
    assert!(is_conflict(
        &s.attach_volume(&c.id, s1, "/n", false).unwrap_err(),
        "being created"
    ));
    s.set_volume_status(&c.id, VolumeStatus::Ready).unwrap();
    s.attach_volume(&c.id, s1, "/n", false).unwrap();

    assert!(is_conflict(
        &s.create_volume(&NewVolume {
            user_id: a.id.clone(),
            name: "data".into(),
            size_mb: 1,
            file_path: "/y".into(),
            status: VolumeStatus::Ready,
        })
        .unwrap_err(),
        r#"volume "data" already exists"#
    ));
    let deleted = s.delete_volume(&a.id, "data").unwrap();
    assert_eq!(deleted.id, v.id);
}

#[test]
fn orphan_detach_and_sandbox_removal() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let live = sandbox(&s, &a, "live");
    let lost = sandbox(&s, &a, "lost");
    let gone = sandbox(&s, &a, "gone");
    let v1 = volume(&s, &a, "v1", 10);
    let v2 = volume(&s, &a, "v2", 10);
    let v3 = volume(&s, &a, "v3", 10);
    s.attach_volume(&v1.id, &live.id, "/v", true).unwrap();
    s.attach_volume(&v2.id, &lost.id, "/v", false).unwrap();
    s.attach_volume(&v3.id, &gone.id, "/v", false).unwrap();
    s.attach_volume(&v1.id, &gone.id, "/w", true).unwrap();
    s.set_status(&lost.id, SandboxStatus::Unknown, "no snapshot")
        .unwrap();
    // Simulate a row that vanished without its attachments being removed.
    {
        let c = raw(s.path());
        c.execute("PRAGMA foreign_keys = OFF", []).unwrap();
        c.execute("DELETE FROM sandboxes WHERE id = ?1", [&gone.id])
            .unwrap();
    }
    let mut orphans: Vec<_> = s
        .detach_orphans()
        .unwrap()
        .into_iter()
        .map(|a| (a.sandbox_id, a.volume_name))
        .collect();
    orphans.sort();
    let mut want = vec![
        (lost.id.clone(), "v2".to_string()),
        (gone.id.clone(), "v3".to_string()),
        (gone.id.clone(), "v1".to_string()),
    ];
    want.sort();
    assert_eq!(orphans, want);
    assert_eq!(s.sandbox_attachments(&live.id).unwrap().len(), 1);
    assert!(s.detach_orphans().unwrap().is_empty());

    // Destroy removes attachments and publish rules with the row.
    s.create_publish_rule(&live.id, &a.id, 8080, "live-app")
        .unwrap();
    let removal = s.delete_sandbox(&live.id).unwrap();
    assert_eq!(removal.sandbox.id, live.id);
    assert_eq!(removal.attachments.len(), 1);
    assert_eq!(removal.publish_rules[0].alias, "live-app");
    assert!(s.volume_attachments(&v1.id).unwrap().is_empty());
    assert!(matches!(
        s.publish_rule_by_alias("live-app"),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_sandbox(&live.id),
        Err(StoreError::NotFound)
    ));
}

#[test]
fn volume_storage_quota() {
    let (_d, s) = open();
    let a = user(&s, "a");
    volume(&s, &a, "big", 20_000);
    assert_eq!(s.storage_used_mb(&a.id).unwrap(), 20_000);
    let e = s
        .create_volume(&NewVolume {
            user_id: a.id.clone(),
            name: "more".into(),
            size_mb: 481,
            file_path: "/x".into(),
            status: VolumeStatus::Ready,
        })
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Quota(m) if m.contains("20480")),
        "{e}"
    );
    volume(&s, &a, "fits", 480);
    let big = s.volume(&a.id, "big").unwrap();
    assert!(matches!(
        s.resize_volume(&big.id, 20_001),
        Err(StoreError::Quota(_))
    ));
    assert_eq!(s.list_volumes(&a.id).unwrap().len(), 2);
}

#[test]
fn grown_root_disks_share_the_storage_quota() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let disk = |name: &str, mb: u64| {
        s.insert_sandbox(&NewSandbox {
            id: ids::sandbox_id(),
            user_id: a.id.clone(),
            name: name.into(),
            engine: "qemu".into(),
            disk_size_mb: mb,
            ..Default::default()
        })
    };
    volume(&s, &a, "data", 10_000);
    let first = disk("one", 10_000).unwrap();
    assert_eq!(s.storage_used_mb(&a.id).unwrap(), 20_000);
    // A root disk past the quota is refused, and so is a volume once root
    // disks use the room: one budget bounds what a user can make the host store.
    let e = disk("two", 481).unwrap_err();
    assert!(
        matches!(&e, StoreError::Quota(m) if m.contains("root disks")),
        "{e}"
    );
    // Disks at the image's size (0) are not counted.
    disk("plain", 0).unwrap();
    let e = s
        .create_volume(&NewVolume {
            user_id: a.id.clone(),
            name: "more".into(),
            size_mb: 481,
            file_path: "/x".into(),
            status: VolumeStatus::Ready,
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::Quota(_)), "{e}");
    // A destroyed sandbox gives its room back.
    s.delete_sandbox(&first.id).unwrap();
    disk("three", 10_000).unwrap();
    // Images count too: none fits now; after a volume is gone one does,
    // and it takes the room.
    let image = |name: &str, mb: u64| {
        s.create_image(&bhatti_store::NewImage {
            user_id: a.id.clone(),
            name: name.into(),
            source: "import:x".into(),
            file_path: "/x".into(),
            size_mb: mb,
            ..Default::default()
        })
    };
    assert!(matches!(image("big", 481), Err(StoreError::Quota(_))));
    s.delete_volume(&a.id, "data").unwrap();
    image("fits", 9_000).unwrap();
    assert_eq!(s.storage_used_mb(&a.id).unwrap(), 19_000);
    assert!(matches!(image("over", 1_481), Err(StoreError::Quota(_))));
}

// ------------------------------------------------ snapshots, images, publish

#[test]
fn snapshots_unique_per_user_and_counted() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let b = user(&s, "b");
    let snap = |u: &User, name: &str| {
        s.create_snapshot(&NewSnapshot {
            user_id: u.id.clone(),
            name: name.into(),
            source_sandbox: "abcdabcdabcdabcd".into(),
            dir: format!("/data/snapshots/{}/{name}", u.id),
            manifest: json!({"format_version": 1.0, "cpus": 2.0, "memory_mb": 2048.0}),
            size_mb: 300,
            image: "py".into(),
        })
    };
    let cp = snap(&a, "cp").unwrap();
    assert_eq!(cp.manifest["cpus"], json!(2));
    assert_eq!(cp.image, "py");
    #[derive(Deserialize)]
    struct M {
        format_version: u32,
        memory_mb: u32,
    }
    let m: M = cp.manifest_as().unwrap();
    assert_eq!((m.format_version, m.memory_mb), (1, 2048));

    assert!(is_conflict(
        &snap(&a, "cp").unwrap_err(),
        r#"snapshot "cp" already exists"#
    ));
    snap(&b, "cp").unwrap();
    assert!(matches!(
        s.snapshot(&b.id, "nope"),
        Err(StoreError::NotFound)
    ));
    for i in 1..5 {
        snap(&a, &format!("cp{i}")).unwrap();
    }
    assert_eq!(s.count_snapshots(&a.id).unwrap(), 5);
    assert_eq!(s.count_snapshots(&b.id).unwrap(), 1);
    let e = snap(&a, "sixth").unwrap_err();
    assert!(
        matches!(&e, StoreError::Quota(m) if m == "snapshot limit reached (5/5)"),
        "{e}"
    );
    assert_eq!(s.list_snapshots(&a.id).unwrap()[0].name, "cp4");
    assert_eq!(s.delete_snapshot(&a.id, "cp").unwrap().id, cp.id);
    assert_eq!(s.count_snapshots(&a.id).unwrap(), 4);
    assert_eq!(s.snapshot(&b.id, "cp").unwrap().user_id, b.id);
}

#[test]
fn images_own_then_admin_with_quota() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let img = |owner: &str, name: &str| {
        s.create_image(&NewImage {
            user_id: owner.into(),
            name: name.into(),
            source: "built-in".into(),
            file_path: format!("/images/{owner}/{name}.ext4"),
            size_mb: 100,
            ..Default::default()
        })
    };
    img(ADMIN_USER, "minimal").unwrap();
    img(ADMIN_USER, "python").unwrap();
    img(&a.id, "python").unwrap();
    assert_eq!(s.image(&a.id, "python").unwrap().user_id, a.id);
    assert_eq!(s.image(&a.id, "minimal").unwrap().user_id, "");
    assert!(matches!(s.image(&a.id, "nope"), Err(StoreError::NotFound)));
    let listed: Vec<_> = s
        .list_images(&a.id)
        .unwrap()
        .into_iter()
        .map(|i| (i.user_id.is_empty(), i.name))
        .collect();
    assert_eq!(
        listed,
        [
            (false, "python".into()),
            (true, "minimal".into()),
            (true, "python".into())
        ]
    );
    assert!(is_conflict(
        &img(&a.id, "python").unwrap_err(),
        "already exists"
    ));
    // Only own images are deleted.
    assert!(matches!(
        s.delete_image(&a.id, "minimal"),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.image_exact(&a.id, "minimal"),
        Err(StoreError::NotFound)
    ));

    for i in 1..10 {
        img(&a.id, &format!("i{i}")).unwrap();
    }
    assert_eq!(s.count_images(&a.id).unwrap(), 10);
    let e = img(&a.id, "eleventh").unwrap_err();
    assert!(
        matches!(&e, StoreError::Quota(m) if m == "image limit reached (10/10)"),
        "{e}"
    );
    img(ADMIN_USER, "admin-has-no-quota").unwrap();
    s.delete_image(&a.id, "python").unwrap();
    assert_eq!(s.image(&a.id, "python").unwrap().user_id, "");
}

#[test]
fn publish_rules() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let sb = sandbox(&s, &a, "web");
    let other = sandbox(&s, &a, "other");
    let r = s
        .create_publish_rule(&sb.id, &a.id, 3000, "my-app")
        .unwrap();
    assert!(r.id.starts_with("pub_") && r.id.len() == 20);
    assert_eq!(s.publish_rule_by_alias("my-app").unwrap(), r);
    assert_eq!(s.publish_rule(&sb.id, 3000).unwrap(), r);
    let e = s
        .create_publish_rule(&sb.id, &a.id, 3000, "else")
        .unwrap_err();
    assert!(is_conflict(&e, "port 3000 is already published"), "{e}");
    let e = s
        .create_publish_rule(&other.id, &a.id, 80, "my-app")
        .unwrap_err();
    assert!(is_conflict(&e, r#"alias "my-app" is already taken"#), "{e}");
    assert!(matches!(
        s.create_publish_rule("ffffffffffffffff", &a.id, 80, "ghost"),
        Err(StoreError::NotFound)
    ));
    s.create_publish_rule(&sb.id, &a.id, 80, "my-web").unwrap();
    let ports: Vec<u16> = s
        .list_publish_rules(&sb.id)
        .unwrap()
        .iter()
        .map(|r| r.port)
        .collect();
    assert_eq!(ports, [80, 3000]);
    assert_eq!(s.list_all_publish_rules().unwrap().len(), 2);
    s.delete_publish_rule(&sb.id, 3000).unwrap();
    assert!(matches!(
        s.delete_publish_rule(&sb.id, 3000),
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.delete_publish_rules(&sb.id).unwrap().len(), 1);
}

// ---------------------------------------------------------------- events

#[test]
fn events_record_query_retention() {
    let (_d, s) = open();
    let now = SystemTime::now();
    let days_ago = |d: u64| time::format_ts(now - Duration::from_secs(d * 86_400));
    let ev = |t: &str, user: &str, sb: &str, ts: Option<String>| NewEvent {
        event_type: t.into(),
        user_id: user.into(),
        sandbox_id: sb.into(),
        meta: json!({"n": 1}),
        ts,
    };
    s.record_events(&[
        ev("sandbox.created", "u1", "s1", Some(days_ago(100))),
        ev("sandbox.destroyed", "u1", "s1", Some(days_ago(95))),
        ev("auth.failed", "", "", Some(days_ago(10))),
        ev("sandbox.created", "u2", "s2", Some(days_ago(1))),
    ])
    .unwrap();
    let id = s
        .record_event(&ev("sandbox.stopped", "u2", "s2", None))
        .unwrap();
    assert!(id > 0);

    let types = |q: EventQuery| -> Vec<String> {
        s.events(&q)
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    };
    let all = s.events(&EventQuery::default()).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].event_type, "sandbox.stopped", "newest first");
    assert_eq!(all[0].meta, json!({"n": 1}));
    assert_eq!(
        types(EventQuery {
            type_prefix: Some("sandbox.".into()),
            ..Default::default()
        }),
        [
            "sandbox.stopped",
            "sandbox.created",
            "sandbox.destroyed",
            "sandbox.created"
        ]
    );
    assert_eq!(
        types(EventQuery {
            type_prefix: Some("sandbox.created".into()),
            user_id: Some("u1".into()),
            ..Default::default()
        }),
        ["sandbox.created"]
    );
    assert_eq!(
        types(EventQuery {
            sandbox_id: Some("s2".into()),
            limit: Some(1),
            ..Default::default()
        }),
        ["sandbox.stopped"]
    );
    assert_eq!(
        types(EventQuery {
            since: Some(days_ago(11)),
            ..Default::default()
        })
        .len(),
        3
    );
    // Non-millisecond forms are normalized, not compared as raw text.
    let ts_event = s
        .record_event(&ev("x.y", "", "", Some("2020-01-01T00:00:00Z".into())))
        .unwrap();
    let stored = s.events(&EventQuery {
        type_prefix: Some("x.".into()),
        ..Default::default()
    });
    assert_eq!(stored.unwrap()[0].ts, "2020-01-01T00:00:00.000Z");
    assert!(ts_event > id);
    assert!(matches!(
        s.events(&EventQuery {
            since: Some("yesterday".into()),
            ..Default::default()
        }),
        Err(StoreError::Invalid(_))
    ));

    // 90-day retention.
    assert_eq!(s.delete_events_before(&days_ago(90)).unwrap(), 3);
    assert_eq!(s.events(&EventQuery::default()).unwrap().len(), 3);
}

// ----------------------------------------------------------- type coercion

#[test]
fn type_coercion_floats_from_json_and_reals_in_sqlite() {
    let (_d, s) = open();
    let a = user(&s, "a");
    let ok = sandbox(&s, &a, "ok");
    let bad = sandbox(&s, &a, "bad");
    let c = raw(s.path());

    // Float-typed whole numbers inside VmState JSON read as integers.
    c.execute(
        "UPDATE sandboxes SET vm_state = ?2, generation = 3 WHERE id = ?1",
        [
            ok.id.as_str(),
            &format!(
                r#"{{"engine":"qemu","id":"{}","name":"ok","status":"stopped","generation":3.0,
                    "detail":{{"cpus":1.0,"memory_mb":2048.0}}}}"#,
                ok.id
            ),
        ],
    )
    .unwrap();
    let row = s.sandbox_by_id(&ok.id).unwrap();
    let vs: VmState = row.vm_state_as().unwrap().unwrap();
    assert_eq!((vs.generation, vs.status), (3, EngStatus::Stopped));
    let d: Detail = coerce::from_json_value(vs.detail, "detail").unwrap();
    assert_eq!((d.cpus, d.memory_mb), (1, 2048));
    assert_eq!(
        (vs.engine.as_str(), vs.id.as_str(), vs.name.as_str()),
        ("qemu", ok.id.as_str(), "ok")
    );

    // A fractional value where an integer belongs is a clear error.
    c.execute(
        "UPDATE sandboxes SET vm_state = ?2 WHERE id = ?1",
        [
            bad.id.as_str(),
            r#"{"engine":"qemu","id":"x","name":"bad","status":"running","generation":1.5}"#,
        ],
    )
    .unwrap();
    let e = s
        .sandbox_by_id(&bad.id)
        .unwrap()
        .vm_state_as::<VmState>()
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("vm_state") && m.contains("1.5")),
        "{e}"
    );

    // Integer columns: SQLite's INTEGER affinity already turns 2.0 / '2.0'
    // into 2; whatever survives as REAL is read tolerantly.
    c.execute(
        "UPDATE sandboxes SET cpus = 2.0, memory_mb = '2048.0' WHERE id = ?1",
        [&ok.id],
    )
    .unwrap();
    let (t1, t2): (String, String) = c
        .query_row(
            "SELECT typeof(cpus), typeof(memory_mb) FROM sandboxes WHERE id = ?1",
            [&ok.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((t1.as_str(), t2.as_str()), ("integer", "integer"));
    let row = s.sandbox_by_id(&ok.id).unwrap();
    assert_eq!((row.cpus, row.memory_mb), (2, 2048));
    // A real REAL 1.0 (e.g. an expression or a REAL-typed legacy column).
    let v: f64 = c
        .query_row("SELECT CAST(1 AS REAL)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 1.0);
    c.query_row("SELECT CAST(1 AS REAL), 1.5, 'x'", [], |r| {
        assert_eq!(coerce::int_from_sql(r.get_ref(0)?, "cpus").unwrap(), 1);
        assert!(coerce::int_from_sql(r.get_ref(1)?, "cpus").is_err());
        assert!(coerce::int_from_sql(r.get_ref(2)?, "cpus").is_err());
        Ok(())
    })
    .unwrap();

    // A REAL 1.5 stored in an integer column is refused, naming the column.
    c.execute(
        "UPDATE users SET max_sandboxes = 2.5 WHERE id = ?1",
        [&a.id],
    )
    .unwrap();
    let ty: String = c
        .query_row(
            "SELECT typeof(max_sandboxes) FROM users WHERE id = ?1",
            [&a.id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(ty, "real");
    let e = s.user(&a.id).unwrap_err();
    assert!(
        matches!(&e, StoreError::Invalid(m) if m.contains("max_sandboxes") && m.contains("2.5")),
        "{e}"
    );
    c.execute("UPDATE users SET max_sandboxes = 5 WHERE id = ?1", [&a.id])
        .unwrap();

    // Recovery reads every row on its own: one unreadable row is reported
    // with its ID, the others still come back.
    c.execute(
        "UPDATE sandboxes SET disk_size_mb = 0.5 WHERE id = ?1",
        [&bad.id],
    )
    .unwrap();
    let rows = s.recovery_rows().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        if r.id == bad.id {
            let e = r.sandbox.unwrap_err();
            assert!(
                matches!(&e, StoreError::Invalid(m) if m.contains("disk_size_mb")),
                "{e}"
            );
        } else {
            assert_eq!(r.sandbox.unwrap().cpus, 2);
        }
    }
    assert!(matches!(
        s.list_all_sandboxes(),
        Err(StoreError::Invalid(_))
    ));

    // Other JSON columns are normalized too.
    let t = s
        .create_template(&Template {
            user_id: a.id.clone(),
            name: "t".into(),
            ..Default::default()
        })
        .unwrap();
    c.execute(
        r#"UPDATE templates SET volumes = '[{"name":"d","size_mb":2048.0}]' WHERE id = ?1"#,
        [&t.id],
    )
    .unwrap();
    assert_eq!(
        s.template(&a.id, "t").unwrap().volumes,
        json!([{"name":"d","size_mb":2048}])
    );
}

// ------------------------------------------------------ concurrency, reopen

#[test]
fn concurrent_writers_on_one_store() {
    let (_d, s) = open();
    let a = user(&s, "a");
    s.set_quotas(
        &a.id,
        &Quotas {
            max_sandboxes: 10_000,
            ..a.quotas
        },
    )
    .unwrap();
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            let uid = a.id.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    s.insert_sandbox(&NewSandbox {
                        id: ids::sandbox_id(),
                        user_id: uid.clone(),
                        name: format!("t{t}-{i}"),
                        ..Default::default()
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.count_active_sandboxes(&a.id).unwrap(), 800);
}

#[test]
fn concurrent_writers_on_two_connections_wait_instead_of_failing() {
    let (_d, path) = db();
    let s1 = Arc::new(Store::open(&path).unwrap());
    let s2 = Arc::new(Store::open(&path).unwrap());
    let threads: Vec<_> = [&s1, &s2, &s1, &s2]
        .into_iter()
        .enumerate()
        .map(|(t, s)| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                for i in 0..100 {
                    s.record_event(&NewEvent {
                        event_type: format!("test.t{t}"),
                        meta: json!({ "i": i }),
                        ..Default::default()
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s2.events(&EventQuery::default()).unwrap().len(), 400);
}

#[test]
fn reopen_after_drop_sees_everything() {
    let (_d, path) = db();
    let (uid, key, sid) = {
        let s = Store::open(&path).unwrap();
        let (u, key) = s
            .create_user(&NewUser {
                name: "a".into(),
                ..Default::default()
            })
            .unwrap();
        let sb = s
            .insert_sandbox(&NewSandbox {
                id: ids::sandbox_id(),
                user_id: u.id.clone(),
                name: "web".into(),
                labels: labels(&[("env", "prod")]),
                vm_state: Some(json!({"generation": 4})),
                generation: 4,
                ..Default::default()
            })
            .unwrap();
        s.set_secret(&u.id, "K", b"cipher").unwrap();
        let v = volume(&s, &u, "data", 10);
        s.attach_volume(&v.id, &sb.id, "/data", false).unwrap();
        s.create_publish_rule(&sb.id, &u.id, 80, "web-a").unwrap();
        s.record_event(&NewEvent::new("sandbox.created")).unwrap();
        (u.id, key, sb.id)
    };
    let s = Store::open(&path).unwrap();
    assert_eq!(s.migrations_applied(), 0);
    assert_eq!(s.user_by_api_key(&key).unwrap().id, uid);
    let sb = s.sandbox(&uid, "web").unwrap();
    assert_eq!((sb.id.as_str(), sb.generation), (sid.as_str(), 4));
    assert_eq!(sb.labels, labels(&[("env", "prod")]));
    assert_eq!(s.secret_value(&uid, "K").unwrap(), b"cipher");
    assert_eq!(s.sandbox_attachments(&sid).unwrap()[0].mount, "/data");
    assert_eq!(s.publish_rule_by_alias("web-a").unwrap().sandbox_id, sid);
    assert_eq!(s.events(&EventQuery::default()).unwrap().len(), 1);
}

#[test]
fn tasks_end_once_belong_to_their_user_and_fail_after_a_restart() {
    let (dir, path) = db();
    let s = Store::open(&path).unwrap();
    let (a, b) = (user(&s, "a"), user(&s, "b"));
    let t = s.create_task(&a.id, "image_pull").unwrap();
    assert_eq!(
        (t.status.as_str(), t.kind.as_str()),
        ("running", "image_pull")
    );
    assert_eq!(t.id.len(), 16);
    s.set_task_progress(&t.id, &serde_json::json!({"phase": "downloading"}))
        .unwrap();
    assert_eq!(
        s.task(&a.id, &t.id).unwrap().progress["phase"],
        "downloading"
    );
    assert!(matches!(s.task(&b.id, &t.id), Err(StoreError::NotFound)));

    s.complete_task(&t.id, Some("{\"name\":\"x\"}".into()))
        .unwrap();
    let done = s.task(&a.id, &t.id).unwrap();
    assert_eq!(done.status, "completed");
    assert!(done.completed_at.is_some() && done.result.is_some());
    // Ended once: neither a late failure nor progress changes it.
    assert!(matches!(
        s.fail_task(&t.id, "late"),
        Err(StoreError::Conflict(_))
    ));
    s.set_task_progress(&t.id, &serde_json::json!({"phase": "late"}))
        .unwrap();
    assert_eq!(
        s.task(&a.id, &t.id).unwrap().progress["phase"],
        "downloading"
    );

    // Failing ends it too, once; the progress so far stays.
    let f = s.create_task(&a.id, "image_pull").unwrap();
    assert_eq!(f.progress, serde_json::json!({}));
    s.fail_task(&f.id, "manifest unknown").unwrap();
    let failed = s.task(&a.id, &f.id).unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.error.as_deref()),
        ("failed", Some("manifest unknown"))
    );
    assert!(failed.completed_at.is_some() && failed.result.is_none());
    assert!(matches!(
        s.complete_task(&f.id, None),
        Err(StoreError::Conflict(_))
    ));

    // A task running when the store is reopened (a daemon killed mid-pull).
    let cut = s.create_task(&a.id, "image_pull").unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.fail_running_tasks("restarted").unwrap(), 1);
    let t = s.task(&a.id, &cut.id).unwrap();
    assert_eq!(
        (t.status.as_str(), t.error.as_deref()),
        ("failed", Some("restarted"))
    );
    assert_eq!(s.fail_running_tasks("again").unwrap(), 0);
    drop(dir);
}

#[test]
fn shared_images_are_seen_by_whom_they_are_shared_with() {
    let (_d, s) = open();
    let (a, b, c) = (user(&s, "a"), user(&s, "b"), user(&s, "c"));
    let img = |u: &User, name: &str| {
        s.create_image(&bhatti_store::NewImage {
            user_id: u.id.clone(),
            name: name.into(),
            source: "import:x".into(),
            file_path: format!("/img/{}/{name}", u.id),
            size_mb: 1,
            ..Default::default()
        })
        .unwrap()
    };
    img(&a, "py");
    img(&c, "py");
    let names = |u: &User| -> Vec<String> {
        s.list_images(&u.id)
            .unwrap()
            .into_iter()
            .map(|i| format!("{}:{}", i.name, i.user_id == u.id))
            .collect()
    };
    assert!(matches!(s.image(&b.id, "py"), Err(StoreError::NotFound)));
    s.share_image(&a.id, "py", std::slice::from_ref(&b.id))
        .unwrap();
    assert_eq!(s.image(&b.id, "py").unwrap().user_id, a.id);
    assert_eq!(names(&b), ["py:false"]);
    // c keeps its own; its own wins over a share.
    s.share_image(&a.id, "py", &[]).unwrap();
    assert_eq!(s.image(&c.id, "py").unwrap().user_id, c.id);
    assert_eq!(
        s.image_shares(&a.id, "py").unwrap(),
        vec!["*".to_string(), b.id.clone()]
    );
    s.unshare_image(&a.id, "py", &[]).unwrap();
    assert!(matches!(s.image(&b.id, "py"), Err(StoreError::NotFound)));
    // Deleting the image takes its shares with it.
    s.share_image(&a.id, "py", std::slice::from_ref(&b.id))
        .unwrap();
    s.delete_image(&a.id, "py").unwrap();
    assert!(s.list_images(&b.id).unwrap().is_empty());
    assert!(matches!(
        s.share_image(&b.id, "py", &[]),
        Err(StoreError::NotFound)
    ));
}
