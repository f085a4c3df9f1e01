//! The port proxy scenario, and the raw HTTP it speaks. (A scenario shared by the Docker and microVM suites.)

use super::*;

/// Sends `request` as written over a new TCP connection, closes the
/// sending side, and returns everything the daemon answered.
pub async fn raw_http(d: &TestDaemon, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("send");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
        .await
        .expect("the daemon answers")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts busybox httpd on port 8000 of sandbox `id`, serving `index`
/// at `/` and a CGI script at `/cgi-bin/h` that echoes the forwarded
/// headers; returns `/ports` once 8000 is listed.
pub async fn serve_www(d: &TestDaemon, key: &str, id: &str, index: &str) -> Value {
    let script = format!("mkdir -p /workspace/www/cgi-bin && echo {index} > /workspace/www/index.html && \
        printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"xff=$HTTP_X_FORWARDED_FOR host=$HTTP_HOST q=$QUERY_STRING proto=$HTTP_X_FORWARDED_PROTO fhost=$HTTP_X_FORWARDED_HOST\"\\n' > /workspace/www/cgi-bin/h && \
        chmod +x /workspace/www/cgi-bin/h");
    assert_eq!(d.sh(key, id, &script).await.0, 0);
    d.detach(
        key,
        id,
        &[
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8000",
            "-h",
            "/workspace/www",
        ],
    )
    .await;
    let mut ports = Value::Null;
    for _ in 0..40 {
        ports = d
            .req("GET", &format!("/sandboxes/{id}/ports"), Some(key), None)
            .await
            .json();
        if ports
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["container_port"] == 8000))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ports
}

/// The authenticated proxy: HTTP through a tunnel with forwarded headers;
/// bad port, unknown sandbox, nothing listening.
pub async fn proxy(d: &TestDaemon) {
    let key = d.user("proxy", Quotas::default());
    let sb = d.create(&key, json!({"name": "p"})).await;
    let id = sb["id"].as_str().unwrap();
    let ports = serve_www(d, &key, id, "hello-proxy").await;
    let p = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["container_port"] == 8000)
        .expect("port 8000 listed");
    assert_eq!(p["proxy_url"], format!("/sandboxes/{id}/proxy/8000/"));
    let all = d.req("GET", "/ports", Some(&key), None).await.json();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["sandbox_id"] == id && x["container_port"] == 8000));

    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello-proxy\n");
    let r = d
        .raw(
            "GET",
            "/sandboxes/p/proxy/8000/cgi-bin/h?a=1&b=2",
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("xff=127.0.0.1"), "{}", r.text());
    assert!(r.text().contains("host=localhost:8000"), "{}", r.text());
    assert!(r.text().contains("q=a=1&b=2"), "{}", r.text());
    // A percent-encoded name is decoded once, and the path after the port
    // is still the one forwarded (it was "/" before).
    let r = d
        .raw(
            "GET",
            "/sandboxes/%70/proxy/8000/cgi-bin/h?enc=1",
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("q=enc=1"), "{}", r.text());
    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/missing"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/0/"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/99999/"),
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        400
    );
    assert_eq!(
        d.raw(
            "GET",
            "/sandboxes/nosuch/proxy/8000/",
            Some(&key),
            &[],
            vec![]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        d.raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8000/"),
            None,
            &[],
            vec![]
        )
        .await
        .status,
        401
    );
    let r = d
        .raw(
            "GET",
            &format!("/sandboxes/{id}/proxy/8001/"),
            Some(&key),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
}
