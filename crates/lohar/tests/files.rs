//! File operations and the forward channel through the client against lohar in
//! test mode (the seed's Agent "Files" tests and the client's file/forward paths).
#![allow(clippy::unwrap_used)]
// a test panics to report its failure
// Test data of known, small sizes: the casts cannot lose anything.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)]

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bhatti_agent_client::{ClientError, ReadOptions};
use common::{s, Lohar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Names of write temp files left in `dir`.
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".bhatti-tmp"))
        .collect()
}

fn agent_err(e: ClientError) -> String {
    match e {
        ClientError::Agent { message: m, .. } => m,
        e => panic!("expected an agent error, got {e:?}"),
    }
}

#[tokio::test]
async fn read_normal_empty_binary_and_unicode_names() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("hello.txt");
    std::fs::write(&p, "hello world\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut out = Vec::new();
    let (head, n) = c
        .file_read(&s(&p), ReadOptions::default(), &mut out)
        .await
        .unwrap();
    assert_eq!((head.size, head.mode.as_str(), n), (12, "0640", 12));
    assert_eq!(out, b"hello world\n");

    let e = l.path("empty");
    std::fs::write(&e, "").unwrap();
    assert!(c
        .file_read_to_vec(&s(&e), ReadOptions::default())
        .await
        .unwrap()
        .is_empty());

    // Every byte value, and more than one 32 KiB chunk.
    let bin: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let b = l.path("bin.dat");
    std::fs::write(&b, &bin).unwrap();
    assert_eq!(
        c.file_read_to_vec(&s(&b), ReadOptions::default())
            .await
            .unwrap(),
        bin
    );

    let u = l.path("файл-日本語-🎉 spaced.txt");
    std::fs::write(&u, "ünïcödé ✓\n").unwrap();
    assert_eq!(
        c.file_read_to_vec(&s(&u), ReadOptions::default())
            .await
            .unwrap(),
        "ünïcödé ✓\n".as_bytes()
    );
    let st = c.file_stat(&s(&u)).await.unwrap();
    assert_eq!(st.name, "файл-日本語-🎉 spaced.txt");
}

fn numbered(l: &Lohar, n: usize) -> String {
    let p = l.path("lines.txt");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 1..=n {
        writeln!(f, "line {i}").unwrap();
    }
    s(&p)
}

#[tokio::test]
async fn truncated_reads_offset_limit_max_bytes() {
    let l = Lohar::start();
    let c = l.client();
    let p = numbered(&l, 10_000);
    let read = |o: i64, li: i64, mb: i64| {
        let c = c.clone();
        let p = p.clone();
        async move {
            let mut out = Vec::new();
            let (head, _) = c
                .file_read(
                    &p,
                    ReadOptions {
                        offset: o,
                        limit: li,
                        max_bytes: mb,
                    },
                    &mut out,
                )
                .await
                .unwrap();
            (head.size, String::from_utf8(out).unwrap())
        }
    };
    let full_size = std::fs::metadata(&p).unwrap().len() as i64;
    let (size, out) = read(5000, 3, 0).await;
    assert_eq!(size, full_size, "FILE_READ_RESP carries the total size");
    assert_eq!(out, "line 5000\nline 5001\nline 5002\n");
    assert_eq!(read(0, 2, 0).await.1, "line 1\nline 2\n");
    assert_eq!(read(-5, 1, 0).await.1, "line 1\n", "offset below 1 means 1");
    assert_eq!(
        read(0, 0, 10).await.1,
        "line 1\nlin",
        "byte budget cuts a line"
    );
    assert_eq!(read(9999, 0, 0).await.1, "line 9999\nline 10000\n");
    assert_eq!(read(10_001, 5, 0).await.1, "", "past the end");
    assert_eq!(read(100, 50, 25).await.1, "line 100\nline 101\nline 10");
    // A 10k-line file, truncated: only what was asked travels.
    let (_, few) = read(1, 10, 0).await;
    assert_eq!(few.lines().count(), 10);
}

#[tokio::test]
async fn truncated_read_of_a_final_line_without_newline_and_a_huge_line() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("t.txt");
    let huge = "x".repeat(600 * 1024);
    std::fs::write(&p, format!("a\n{huge}\nlast")).unwrap();
    let opts = ReadOptions {
        offset: 2,
        ..Default::default()
    };
    let out = c.file_read_to_vec(&s(&p), opts).await.unwrap();
    assert_eq!(out.len(), huge.len() + 1 + "last\n".len());
    assert!(out.ends_with(b"\nlast\n"));
}

#[tokio::test]
async fn read_errors() {
    let l = Lohar::start();
    let c = l.client();
    let dir = s(l.dir.path());
    let m = agent_err(
        c.file_read_to_vec(&dir, ReadOptions::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(m, format!("{dir} is a directory"));
    let m = agent_err(
        c.file_read_to_vec("/nope/missing", ReadOptions::default())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("No such file"), "{m}");
    let m = agent_err(
        c.file_read_to_vec("relative.txt", ReadOptions::default())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("absolute"), "{m}");
    let m = agent_err(
        c.file_read_to_vec("/dev/null", ReadOptions::default())
            .await
            .unwrap_err(),
    );
    assert!(m.contains("not a regular file"), "{m}");
}

#[tokio::test]
async fn pseudo_files_report_the_length_they_send() {
    let l = Lohar::start();
    let c = l.client();
    for p in ["/proc/self/status", "/proc/version", "/proc/cpuinfo"] {
        let mut out = Vec::new();
        let (head, n) = c
            .file_read(p, ReadOptions::default(), &mut out)
            .await
            .unwrap_or_else(|e| panic!("read {p}: {e}"));
        assert!(!out.is_empty(), "{p} read empty");
        assert_eq!(head.size, out.len() as i64, "{p}: size vs content");
        assert_eq!(n, out.len() as u64);
    }
    // Line mode reports the same real size.
    let mut out = Vec::new();
    let (head, _) = c
        .file_read(
            "/proc/self/status",
            ReadOptions {
                limit: 1,
                ..Default::default()
            },
            &mut out,
        )
        .await
        .unwrap();
    assert!(head.size > out.len() as i64 && out.starts_with(b"Name:"));
    // A pseudo file larger than the in-memory cap (or not readable at all) is an
    // error, never a claim of 128 TiB.
    let mut out = Vec::new();
    match c
        .file_read("/proc/kcore", ReadOptions::default(), &mut out)
        .await
    {
        Ok((head, n)) => assert_eq!(head.size as u64, n, "kcore size vs content"),
        Err(e) => {
            let m = agent_err(e);
            assert!(
                m.contains("too large to read")
                    || m.contains("denied")
                    || m.contains("not permitted")
                    // Masked (bind-mounted /dev/null) or absent in some containers.
                    || m.contains("not a regular file")
                    || m.contains("No such file"),
                "{m}"
            );
        }
    }
}

#[tokio::test]
async fn write_normal_zero_modes_and_parents() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("a/b/c/new.txt");
    c.file_write_bytes(&s(&p), "", b"content").await.unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"content");
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o644, "default mode");
    assert_eq!(
        std::fs::metadata(l.path("a/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(temp_files(&l.path("a/b/c")), Vec::<String>::new());

    let z = l.path("zero");
    c.file_write_bytes(&s(&z), "0600", b"").await.unwrap();
    assert_eq!(std::fs::read(&z).unwrap().len(), 0);
    assert_eq!(
        std::fs::metadata(&z).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let x = l.path("tool.sh");
    c.file_write_bytes(&s(&x), "0755", b"#!/bin/sh\necho ran\n")
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&x).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let r = c.exec([s(&x)]).await.unwrap();
    assert_eq!(r.stdout_str(), "ran\n");

    // Overwrite keeps the new mode and content; unicode names and binary content.
    let u = l.path("données ✓.bin");
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    c.file_write_bytes(&s(&u), "0644", &bin).await.unwrap();
    c.file_write_bytes(&s(&u), "0640", &bin[..10])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&u).unwrap(), &bin[..10]);
}

/// Big transfers take the zero-copy paths (sendfile out, splice in): the
/// bytes arrive whole and in order, frames stay intact for what follows on
/// a kept connection, and a pseudo file beside them still takes the
/// copying path.
#[tokio::test]
async fn big_reads_and_writes_are_exact_and_leave_the_connection_usable() {
    let l = Lohar::start();
    let c = l.client().reusing();
    // Several frames of either size, and a tail that fills no frame.
    let big: Vec<u8> = (0..(5 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let p = s(&l.path("up/big.bin"));
    c.file_write_bytes(&p, "0600", &big).await.unwrap();
    assert!(
        std::fs::read(&p).unwrap() == big,
        "the written file differs"
    );
    for _ in 0..3 {
        let got = c
            .file_read_to_vec(&p, ReadOptions::default())
            .await
            .unwrap();
        assert!(got == big, "the read differs from the file");
    }
    // A truncated read of the same file takes the line path.
    let head = c
        .file_read_to_vec(
            &p,
            ReadOptions {
                max_bytes: 100,
                ..ReadOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(head.len(), 100);
    assert_eq!(c.idle_connections(), 1, "reads went back to the pool");
    let r = c.exec(["echo", "after"]).await.unwrap();
    assert_eq!(r.stdout_str(), "after\n");
    let status = c
        .file_read_to_vec("/proc/self/status", ReadOptions::default())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&status).contains("Pid:"));
    assert_eq!(c.idle_connections(), 1);
}

#[tokio::test]
async fn write_errors_leave_nothing_behind() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("keep.txt");
    std::fs::write(&p, "original").unwrap();

    // Negative and oversize sizes go through the raw request (the client API takes u64).
    for (size, want) in [
        (-1i64, "file size must be >= 0"),
        (101 * 1024 * 1024, "file too large"),
    ] {
        let mut conn = c.connect().await.unwrap();
        let req = serde_json::json!({"path": s(&p), "mode": "0644", "size": size});
        conn.send(
            bhatti_protocol::MsgType::FileWriteReq,
            serde_json::to_vec(&req).unwrap().as_slice(),
        )
        .await
        .unwrap();
        let f = conn.recv().await.unwrap().unwrap();
        assert!(f.is(bhatti_protocol::MsgType::Error));
        assert!(f.text().contains(want), "{}", f.text());
    }

    // The host goes away halfway: the temp file is removed, the target untouched.
    let mut conn = c.connect().await.unwrap();
    let req = serde_json::json!({"path": s(&p), "mode": "0644", "size": 100});
    conn.send(
        bhatti_protocol::MsgType::FileWriteReq,
        serde_json::to_vec(&req).unwrap().as_slice(),
    )
    .await
    .unwrap();
    conn.send(bhatti_protocol::MsgType::Stdin, b"partial")
        .await
        .unwrap();
    drop(conn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "original");
    assert_eq!(temp_files(l.dir.path()), Vec::<String>::new());

    // More bytes than declared.
    let mut conn = c.connect().await.unwrap();
    let req = serde_json::json!({"path": s(&p), "mode": "0644", "size": 3});
    conn.send(
        bhatti_protocol::MsgType::FileWriteReq,
        serde_json::to_vec(&req).unwrap().as_slice(),
    )
    .await
    .unwrap();
    conn.send(bhatti_protocol::MsgType::Stdin, b"toolong")
        .await
        .unwrap();
    let f = conn.recv().await.unwrap().unwrap();
    assert!(f.text().contains("more than the declared"));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "original");
    assert_eq!(temp_files(l.dir.path()), Vec::<String>::new());

    // Writing over a directory is refused.
    let m = agent_err(
        c.file_write_bytes(&s(l.dir.path()), "", b"x")
            .await
            .unwrap_err(),
    );
    assert!(
        m.contains("is a directory") || m.contains("not a file path"),
        "{m}"
    );
}

#[tokio::test]
async fn write_is_atomic_for_concurrent_readers() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("atomic.bin");
    let a = vec![b'a'; 512 * 1024];
    let b = vec![b'b'; 512 * 1024];
    c.file_write_bytes(&s(&p), "", &a).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let p = p.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let got = std::fs::read(&p).unwrap();
                assert_eq!(got.len(), 512 * 1024, "torn read");
                assert!(
                    got.iter().all(|&x| x == b'a') || got.iter().all(|&x| x == b'b'),
                    "mixed content"
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..20 {
        let data = if i % 2 == 0 { &b } else { &a };
        c.file_write_bytes(&s(&p), "", data).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[tokio::test]
async fn stat_regular_directory_and_missing() {
    let l = Lohar::start();
    let c = l.client();
    let p = l.path("f.txt");
    std::fs::write(&p, "12345").unwrap();
    let st = c.file_stat(&s(&p)).await.unwrap();
    assert_eq!((st.name.as_str(), st.size, st.is_dir), ("f.txt", 5, false));
    assert!(st.mtime > 0);
    let d = c.file_stat(&s(l.dir.path())).await.unwrap();
    assert!(d.is_dir);
    let m = agent_err(c.file_stat("/no/such/file").await.unwrap_err());
    assert!(m.starts_with("stat /no/such/file"), "{m}");
}

#[tokio::test]
async fn ls_normal_empty_and_non_directory() {
    let l = Lohar::start();
    let c = l.client();
    let d = l.path("dir");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("b.txt"), "bb").unwrap();
    std::fs::create_dir(d.join("a-sub")).unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.join("dangling")).unwrap();
    let list = c.file_ls(&s(&d)).await.unwrap();
    let names: Vec<&str> = list.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec!["a-sub", "b.txt", "dangling"]);
    assert!(list[0].is_dir && !list[1].is_dir && list[1].size == 2);
    let e = l.path("empty-dir");
    std::fs::create_dir(&e).unwrap();
    assert!(c.file_ls(&s(&e)).await.unwrap().is_empty());
    let m = agent_err(c.file_ls(&s(&d.join("b.txt"))).await.unwrap_err());
    assert!(m.ends_with("is not a directory"), "{m}");
}

#[tokio::test]
async fn ls_caps_at_ten_thousand_with_the_real_total() {
    let l = Lohar::start();
    let c = l.client();
    let d = l.path("big");
    std::fs::create_dir(&d).unwrap();
    for i in 0..10_050 {
        std::fs::File::create(d.join(format!("f{i:05}"))).unwrap();
    }
    let list = c.file_ls(&s(&d)).await.unwrap();
    assert_eq!(list.len(), 10_001);
    assert_eq!(list[9_999].name, "f09999");
    assert_eq!(
        list[10_000].name,
        "... truncated at 10000 entries (10050 total)"
    );
}

#[tokio::test]
async fn forward_relays_both_ways_and_reports_dial_errors() {
    let l = Lohar::start();
    let c = l.client();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"banner\n").await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap(); // echo after the client half-closes
    });
    let mut t = c.forward(port).await.unwrap();
    let mut banner = [0u8; 7];
    t.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"banner\n");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    t.write_all(&payload).await.unwrap();
    t.shutdown().await.unwrap();
    let mut back = Vec::new();
    t.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, payload);

    // Nothing listens on a freshly released port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = c.forward(closed).await.err().expect("dial must fail");
    let m = agent_err(err);
    assert!(m.contains(&format!("127.0.0.1:{closed}")), "{m}");
}
