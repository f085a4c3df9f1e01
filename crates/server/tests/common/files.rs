//! The file API scenario. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Files: write, read (full and truncated), ls, stat, and the error cases.
pub async fn files(d: &TestDaemon) {
    let key = d.user("files", Quotas::default());
    let sb = d.create(&key, json!({"name": "f"})).await;
    let id = sb["id"].as_str().unwrap();
    let base = format!("/sandboxes/{id}/files");
    let content: String = (1..=100).map(|i| format!("line {i}\n")).collect();
    let w = d
        .raw(
            "PUT",
            &format!("{base}?path=/workspace/dir/a.txt&mode=0600"),
            Some(&key),
            &[],
            content.clone().into_bytes(),
        )
        .await;
    assert_eq!(w.status, 200, "{}", w.text());
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), content);
    assert_eq!(r.header("x-file-size"), Some(content.len().to_string()));
    let t = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt&offset=10&limit=2"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(t.text(), "line 10\nline 11\n");
    assert_eq!(t.header("x-file-size"), Some(content.len().to_string()));
    let ls = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir&ls=true"),
            Some(&key),
            &[],
            vec![],
        )
        .await
        .json();
    assert_eq!(ls[0]["name"], "a.txt");
    assert_eq!(ls[0]["mode"], "0600");
    let st = d
        .raw(
            "HEAD",
            &format!("{base}?path=/workspace/dir"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(st.status, 200);
    assert_eq!(st.header("x-file-isdir").as_deref(), Some("true"));
    let st = d
        .raw(
            "HEAD",
            &format!("{base}?path=/workspace/missing"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(st.status, 404);
    // Binary content round-trips byte for byte.
    let bin: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    assert_eq!(
        d.raw(
            "PUT",
            &format!("{base}?path=/workspace/b.bin"),
            Some(&key),
            &[],
            bin.clone()
        )
        .await
        .status,
        200
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("{base}?path=/workspace/b.bin"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .body
        .to_vec(),
        bin
    );
    let (_, sum, _) = d.sh(&key, id, "wc -c < /workspace/b.bin").await;
    assert_eq!(sum.trim(), "300000");

    // Bad input: clear 4xx, nothing written.
    for (path, want) in [
        ("", 400),
        ("relative.txt", 400),
        ("/workspace/../etc/passwd", 400),
        ("/workspace/x%00y", 400),
    ] {
        let r = d
            .raw(
                "PUT",
                &format!("{base}?path={path}"),
                Some(&key),
                &[],
                b"x".to_vec(),
            )
            .await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
    }
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/nope.txt"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace/dir/a.txt&limit=-1"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400);
    // Only the documented parameters; a directory read as a file conflicts.
    for (q, want) in [
        ("path=/workspace/dir/a.txt&lines=3", 400),
        ("path=/workspace/dir&ls=1", 400),
        ("path=/workspace/dir", 409),
    ] {
        let r = d
            .raw("GET", &format!("{base}?{q}"), Some(&key), &[], vec![])
            .await;
        assert_eq!(r.status, want, "{q}: {}", r.text());
    }
    let big = d
        .raw(
            "PUT",
            &format!("{base}?path=/workspace/big"),
            Some(&key),
            &[("content-length", "104857601")],
            vec![],
        )
        .await;
    assert_eq!(big.status, 413, "{}", big.text());
    // An upload cut short (Content-Length 10, 5 bytes, then the client
    // closes its side) is the client's error, and leaves no file.
    let short = raw_http(
        d,
        &format!(
            "PUT {base}?path=/workspace/short.txt HTTP/1.1\r\nhost: x\r\n\
             authorization: Bearer {key}\r\ncontent-length: 10\r\n\r\nhello"
        ),
    )
    .await;
    assert!(short.starts_with("HTTP/1.1 400"), "{short}");
    assert!(short.contains("ended early"), "{short}");
    let (_, ls, _) = d.sh(&key, id, "ls -a /workspace").await;
    assert!(
        !ls.contains("big") && !ls.contains("relative") && !ls.contains("short"),
        "{ls}"
    );
    // Pseudo files have no size on stat, yet have content: it is served
    // whole, with a Content-Length that matches it.
    let v = d
        .raw(
            "GET",
            &format!("{base}?path=/proc/version"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert!(v.text().starts_with("Linux version"), "{}", v.text());
    assert_eq!(v.header("content-length"), Some(v.body.len().to_string()));
    // A directory is refused with a status (the guest's state: 409), not
    // an empty 200.
    let r = d
        .raw(
            "GET",
            &format!("{base}?path=/workspace"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
}
