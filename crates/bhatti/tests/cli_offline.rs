//! CLI behaviour that needs no daemon: help and completion output, flag
//! checks that fail before any request, confirmations refused without a
//! terminal, error reporting for an unreachable daemon (loopback port 1),
//! `setup` writing its file, and the DB-direct `user` commands against a
//! temporary data directory.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::path::Path;
use std::process::Output;

mod common;
use common::bhatti;

use bhatti_store::Store;

fn run(home: &Path, args: &[&str]) -> Output {
    bhatti(home).args(args).output().expect("run bhatti")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for cmd in [
        "serve",
        "admin",
        "setup",
        "create",
        "list",
        "inspect",
        "edit",
        "destroy",
        "stop",
        "start",
        "exec",
        "shell",
        "ps",
        "ports",
        "file",
        "secret",
        "volume",
        "snapshot",
        "image",
        "task",
        "user",
        "version",
        "completion",
    ] {
        assert!(out.contains(cmd), "help lacks {cmd}:\n{out}");
    }
    let v = run(home.path(), &["--version"]);
    assert!(stdout(&v).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn completion_scripts() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["completion", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("_bhatti"));
    for sh in ["zsh", "fish", "powershell"] {
        let o = run(home.path(), &["completion", sh]);
        assert!(o.status.success(), "{sh}: {}", stderr(&o));
        assert!(!o.stdout.is_empty());
    }
    let bad = run(home.path(), &["completion", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn destructive_commands_refuse_without_a_terminal_or_yes() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["destroy", "web"][..],
        &["rm", "web"],
        &["secret", "delete", "TOKEN"],
        &["volume", "delete", "data"],
        &["snapshot", "delete", "snap1"],
    ] {
        let mut full = vec!["--url", "http://127.0.0.1:1"];
        full.extend_from_slice(args);
        let o = run(home.path(), &full);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("refusing"), "{args:?}: {err}");
        assert!(err.contains("--yes"), "{args:?}: {err}");
        assert!(!err.contains("connect to"), "asked the server first: {err}");
    }
}

#[test]
fn unreachable_daemon_is_an_error_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["--url", "http://127.0.0.1:1", "ls"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("Error: connect to http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("Hint: Is the daemon running"), "{err}");

    // --json errors are one JSON object on stderr
    let o = run(
        home.path(),
        &["--json", "--url", "http://127.0.0.1:1", "inspect", "web"],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("connect to"));
    assert!(v["status"].is_null());
    assert!(o.stdout.is_empty());

    // exec: a connection failure is bhatti's own failure, 125 as in
    // `docker exec`, never a code the command could have given
    let o = run(
        home.path(),
        &["--url", "http://127.0.0.1:1", "exec", "web", "--", "true"],
    );
    assert_eq!(o.status.code(), Some(125));

    // version still prints the CLI version
    let o = run(home.path(), &["--url", "http://127.0.0.1:1", "version"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
    assert!(stdout(&o).contains("unreachable"));

    // the URL in the user's config file is used
    let cfg = home.path().join(".bhatti/config.yaml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, "api_url: http://127.0.0.1:1\nauth_token: bht_x\n").unwrap();
    let o = run(home.path(), &["--json", "version"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["api_url"], "http://127.0.0.1:1");
    assert!(v["api_url_source"]
        .as_str()
        .unwrap()
        .ends_with("config.yaml"));

    // and BHATTI_URL, set for one command, beats the file
    let o = bhatti(home.path())
        .env("BHATTI_URL", "http://127.0.0.1:2")
        .args(["--json", "version"])
        .output()
        .expect("run bhatti");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["api_url"], "http://127.0.0.1:2");
    assert_eq!(v["api_url_source"], "BHATTI_URL");
}

#[test]
fn bad_flags_fail_before_any_request() {
    let home = tempfile::tempdir().unwrap();
    let url = ["--url", "http://127.0.0.1:1"];
    let cases: &[(&[&str], &str)] = &[
        (&["create", "--env", "=x"], "expected KEY=VALUE"),
        (&["create", "--volume", "data"], "name:/mount"),
        (&["create", "--volume", "data:rel"], "absolute"),
        (&["create", "--label", "x"], "k=v"),
        (&["create", "--file", "/no/such/file:/x"], "/no/such/file"),
        (&["create", "--cpus", "0"], "--cpus"),
        (&["edit", "web"], "nothing to change"),
        (&["create", "--egress", "sometimes"], "--egress"),
        (&["edit", "web", "--egress", ","], "--egress"),
        (&["list", "--label", "novalue"], "k=v"),
    ];
    for (args, needle) in cases {
        let mut full = url.to_vec();
        full.extend_from_slice(args);
        let o = run(home.path(), &full);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("connect to"),
            "{args:?} reached the network: {err}"
        );
    }
    // usage errors are clap's exit code 2
    for args in [
        &["exec", "web"][..],
        &["edit", "web", "--keep-hot", "--allow-cold"],
        &["shell", "web", "--new", "--session", "s1"],
        &["list", "-o", "yaml"],
    ] {
        let o = run(home.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn setup_writes_the_config_and_fails_on_a_bad_server() {
    let home = tempfile::tempdir().unwrap();
    // without a terminal and without both flags it cannot ask
    let o = run(home.path(), &["setup", "--url", "http://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--token"));

    let o = run(
        home.path(),
        &["setup", "--url", "http://127.0.0.1:1", "--token", "bht_abc"],
    );
    assert_eq!(o.status.code(), Some(1), "the check must fail");
    let cfg = home.path().join(".bhatti/config.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("http://127.0.0.1:1"), "{text}");
    assert!(text.contains("bht_abc"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn user_commands_work_on_the_database_directly() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let dd = data.path().to_str().unwrap();

    // nothing there yet: list refuses instead of creating a database
    let o = run(home.path(), &["--data-dir", dd, "user", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no database"), "{}", stderr(&o));

    // create (text): ID, subnet, key shown once
    let o = run(
        home.path(),
        &[
            "--data-dir",
            dd,
            "user",
            "create",
            "--name",
            "alice",
            "--max-sandboxes",
            "7",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("user/alice created"), "{out}");
    assert!(out.contains("usr_"), "{out}");
    assert!(out.contains("Subnet"), "{out}");
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("bht_"))
        .expect("key printed")
        .to_string();
    assert_eq!(key.len(), 4 + 64);

    // create (json)
    let o = run(
        home.path(),
        &[
            "--json",
            "--data-dir",
            dd,
            "user",
            "create",
            "--name",
            "bob",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bob: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(bob["name"], "bob");
    assert!(bob["api_key"].as_str().unwrap().starts_with("bht_"));
    assert!(bob.get("api_key_hash").is_none());

    // duplicate name
    let o = run(
        home.path(),
        &["--data-dir", dd, "user", "create", "--name", "alice"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // list --json
    let o = run(home.path(), &["--json", "--data-dir", dd, "user", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let users: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(users.len(), 2);
    let alice = users.iter().find(|u| u["name"] == "alice").unwrap();
    assert_eq!(alice["max_sandboxes"], 7);
    assert_eq!(alice["max_cpus_per_sandbox"], 4);
    assert_eq!(alice["max_memory_mb_per_sandbox"], 4096);
    assert_ne!(alice["subnet_index"], bob["subnet_index"]);
    assert!(users.iter().all(|u| u.get("api_key_hash").is_none()));

    // list (text)
    let o = run(home.path(), &["--data-dir", dd, "user", "ls"]);
    let out = stdout(&o);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(out.contains("alice") && out.contains("bob"), "{out}");

    // rotate-key: the new key works, the old one does not
    let o = run(
        home.path(),
        &["--json", "--data-dir", dd, "user", "rotate-key", "alice"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let new_key = r["api_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    let store = Store::open(data.path().join("state.db")).unwrap();
    assert_eq!(store.user_by_api_key(&new_key).unwrap().name, "alice");
    assert!(store.user_by_api_key(&key).is_err());

    // delete: confirmation needed without a terminal
    let o = run(home.path(), &["--data-dir", dd, "user", "delete", "alice"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refusing"));

    // delete is refused while the user has a secret
    let alice_id = store.user_by_name("alice").unwrap().id;
    store.set_secret(&alice_id, "TOKEN", b"ciphertext").unwrap();
    let o = run(
        home.path(),
        &["--data-dir", dd, "user", "delete", "alice", "-y"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("secret"), "{}", stderr(&o));
    store.delete_secret(&alice_id, "TOKEN").unwrap();

    let o = run(
        home.path(),
        &["--data-dir", dd, "user", "delete", "alice", "-y"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("user/alice deleted"));
    let o = run(
        home.path(),
        &["--data-dir", dd, "user", "rotate-key", "alice"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    // BHATTI_DATA_DIR stands in for --data-dir
    let o = bhatti(home.path())
        .env("BHATTI_DATA_DIR", dd)
        .args(["--json", "user", "list"])
        .output()
        .unwrap();
    let users: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"], "bob");
}

/// `setup --system` installs the shipped unit with ExecStart at this
/// binary, and systemd itself accepts it (`systemd-analyze verify`, which
/// scripts/setup-host.sh installs with the `systemd` package).
#[test]
fn setup_system_installs_a_unit_systemd_accepts() {
    let home = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let o = run(
        home.path(),
        &["setup", "--system", "--root", root.path().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let unit = root.path().join("etc/systemd/system/bhatti.service");
    let text = std::fs::read_to_string(&unit).expect("the unit was written");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_bhatti")).unwrap();
    assert!(
        text.contains(&format!("ExecStart={} serve", exe.display())),
        "{text}"
    );
    for line in ["Type=notify", "KillMode=process", "Restart=always"] {
        assert!(text.lines().any(|l| l == line), "{line} missing: {text}");
    }
    let v = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) runs");
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

/// scripts/setup-host.sh decides per distribution before it changes
/// anything: its `--plan` is run against os-release files of the
/// distributions it supports and of ones it refuses, and against a missing
/// toolchain and an installed Docker (through its BHATTI_CARGO and
/// BHATTI_DOCKERD overrides), without root and without touching the host.
#[test]
fn setup_host_plans_per_distribution_and_refuses_the_rest() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let plan = |os_release: &str, env: &[(&str, &str)]| {
        let f = dir.path().join("os-release");
        std::fs::write(&f, os_release).unwrap();
        let mut c = std::process::Command::new("bash");
        c.arg(repo.join("scripts/setup-host.sh"))
            .arg("--plan")
            .env("BHATTI_OS_RELEASE", &f)
            .env("BHATTI_DOCKERD", "/nonexistent/dockerd");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), all)
    };

    let (code, out) = plan(
        "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("distribution: debian 12 (bookworm)"), "{out}");
    assert!(
        out.contains("qemu-system-x86 from bookworm-backports"),
        "{out}"
    );
    assert!(out.contains("kernel source: linux-source-6.1"), "{out}");
    assert!(out.contains("docker: installing docker.io"), "{out}");
    assert!(out.contains("rust: present"), "{out}");

    let (code, out) = plan(
        "ID=debian\nVERSION_ID=\"13\"\nVERSION_CODENAME=trixie\n",
        &[],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("qemu-system-x86 from trixie"), "{out}");
    assert!(out.contains("kernel source: linux-source\n"), "{out}");
    assert!(!out.contains("backports"), "{out}");

    let (code, out) = plan(
        "ID=ubuntu\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\n",
        &[
            ("BHATTI_DOCKERD", "/bin/true"),
            ("BHATTI_CARGO", "/nonexistent/cargo"),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("the QEMU engine is unavailable"), "{out}");
    // An installed Docker (CE or docker.io) is used, never replaced.
    assert!(
        out.contains("docker: using the installed /bin/true"),
        "{out}"
    );
    assert!(!out.contains("docker.io"), "{out}");
    // No cargo: a toolchain at rust-toolchain.toml's version, by rustup.
    let want = std::fs::read_to_string(repo.join("rust-toolchain.toml")).unwrap();
    let want = want
        .lines()
        .find_map(|l| l.strip_prefix("channel = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    assert!(
        out.contains(&format!("rustup toolchain install {want}")),
        "{out}"
    );

    // An older cargo than the toolchain file asks for is replaced too.
    let old = dir.path().join("old-cargo");
    std::fs::write(
        &old,
        "#!/bin/sh\necho 'cargo 1.63.0 (fd9c4297c 2022-07-01)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, out) = plan(
        "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n",
        &[("BHATTI_CARGO", old.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("rust: present"), "{out}");
    assert!(out.contains(&want), "{out}");

    for (release, why) in [
        (
            "ID=debian\nVERSION_ID=\"11\"\n",
            "Debian 11 is not supported",
        ),
        (
            "ID=ubuntu\nVERSION_ID=\"22.04\"\n",
            "Ubuntu 22.04 is not supported",
        ),
        ("ID=fedora\nVERSION_ID=\"40\"\n", "fedora is not supported"),
    ] {
        let (code, out) = plan(release, &[]);
        assert_eq!(code, Some(2), "{release}: {out}");
        assert!(out.contains(why), "{release}: {out}");
        assert!(
            out.contains("supported: Debian 12, Debian 13, Ubuntu 24.04"),
            "{out}"
        );
        assert!(!out.contains("packages:"), "refused before any plan: {out}");
    }
}
