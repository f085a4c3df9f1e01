//! The client against a small in-process axum server that speaks the
//! wire shapes of docs/api.md: bearer header, idempotent create, NDJSON
//! streaming, file read/stat/write headers, error bodies, and the shell
//! and piped WebSockets — over TCP (loopback) and over a Unix socket.
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bhatti_api as api;
use bhatti_client::{
    Client, ClientConfig, ClientError, Endpoint, PipedEvent, ReadOptions, ShellEvent,
};

#[derive(Default)]
struct Seen {
    auth: Vec<Option<String>>,
    queries: Vec<String>,
    uploads: Vec<(String, Option<String>, usize)>,
}

type St = Arc<Mutex<Seen>>;

fn sandbox(name: &str) -> api::Sandbox {
    serde_json::from_value(serde_json::json!({
        "id": "0123456789abcdef", "name": name, "status": "running", "ip": "10.0.0.2",
        "engine": "qemu", "cpus": 1, "memory_mb": 1024, "image": "minimal",
        "created_at": "2024-01-01T00:00:00Z"
    }))
    .unwrap()
}

fn note(st: &St, h: &HeaderMap) {
    let a = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.lock().unwrap().auth.push(a);
}

fn with_version(mut r: Response) -> Response {
    r.headers_mut()
        .insert("x-bhatti-version", "9.9.9".parse().unwrap());
    r
}

async fn list(State(st): State<St>, h: HeaderMap, RawQuery(q): RawQuery) -> Response {
    note(&st, &h);
    st.lock().unwrap().queries.push(q.unwrap_or_default());
    with_version(Json(vec![sandbox("web")]).into_response())
}

async fn create(
    State(st): State<St>,
    h: HeaderMap,
    Json(req): Json<api::CreateSandbox>,
) -> Response {
    note(&st, &h);
    let name = req.name.unwrap_or_else(|| "gen".into());
    if name == "old" {
        let mut r = (StatusCode::OK, Json(sandbox(&name))).into_response();
        r.headers_mut()
            .insert("x-bhatti-existing", "true".parse().unwrap());
        return r;
    }
    if req.from.as_deref() == Some("missing") {
        return (
            StatusCode::NOT_FOUND,
            Json(api::ErrorBody {
                error: "sandbox \"missing\" not found".into(),
                code: Some(api::ErrorCode::NotFound),
                reason: None,
                request_id: None,
            }),
        )
            .into_response();
    }
    (StatusCode::CREATED, Json(sandbox(&name))).into_response()
}

async fn get_one(Path(id): Path<String>) -> Response {
    if id == "boom" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(api::ErrorBody {
                error: "internal error".into(),
                code: Some(api::ErrorCode::Internal),
                reason: None,
                request_id: Some("req_00000000000000aa".into()),
            }),
        )
            .into_response();
    }
    if id == "a b/c" {
        return Json(sandbox("decoded")).into_response();
    }
    (
        StatusCode::NOT_FOUND,
        Json(api::ErrorBody {
            error: "not found".into(),
            code: None,
            reason: None,
            request_id: None,
        }),
    )
        .into_response()
}

async fn exec(h: HeaderMap, Json(req): Json<api::ExecRequest>) -> Response {
    if req.detach {
        return Json(api::DetachedResponse {
            pid: 42,
            output_file: "/tmp/out".into(),
            detached: true,
        })
        .into_response();
    }
    let streaming = h
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson"));
    if streaming {
        // Lines split across chunks on purpose.
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{\"type\":\"stdout\",\"da")),
            Ok(Bytes::from_static(
                b"ta\":\"hi\\n\"}\n\n{\"type\":\"stderr\",\"data\":\"e\"}\n",
            )),
            Ok(Bytes::from_static(b"{\"type\":\"exit\",\"exit_code\":3}")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        return Response::builder()
            .header("content-type", api::NDJSON)
            .body(body)
            .unwrap();
    }
    Json(api::ExecResponse {
        exit_code: 7,
        stdout: req.cmd.join(" "),
        stderr: String::new(),
    })
    .into_response()
}

async fn files_get(RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    if q.contains("ls=true") {
        return Json(vec![api::FileInfo {
            name: "a".into(),
            size: 1,
            mode: "0644".into(),
            is_dir: false,
            mtime: 0,
        }])
        .into_response();
    }
    Response::builder()
        .header("x-file-size", "11")
        .body(Body::from("hello world"))
        .unwrap()
}

async fn files_head() -> Response {
    Response::builder()
        .header("x-file-size", "4096")
        .header("x-file-mode", "0755")
        .header("x-file-isdir", "true")
        .body(Body::empty())
        .unwrap()
}

async fn files_put(
    State(st): State<St>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let cl = h
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    st.lock()
        .unwrap()
        .uploads
        .push((q.unwrap_or_default(), cl, body.len()));
    Json(api::StatusBody {
        status: "ok".into(),
    })
    .into_response()
}

async fn destroy() -> Response {
    Json(api::StatusBody {
        status: "destroyed".into(),
    })
    .into_response()
}

async fn delete_secret() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

async fn shell_ws(
    State(st): State<St>,
    Path(id): Path<String>,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    note(&st, &h);
    if id == "missing" {
        return get_one(Path(id)).await;
    }
    let q = q.unwrap_or_default();
    ws.on_upgrade(move |s| shell_session(s, q))
}

async fn shell_session(mut s: WebSocket, q: String) {
    if q.contains("session=bad") {
        let _ = s
            .send(Message::Text("attach error: no such session".into()))
            .await;
        return;
    }
    let sid = if q.contains("new=true") { "s2" } else { "s1" };
    let hello = serde_json::to_string(&api::WsServerMsg::Session {
        session_id: sid.into(),
    })
    .unwrap();
    let _ = s.send(Message::Text(hello.into())).await;
    // Echo input back as binary until "exit", acknowledge resizes.
    while let Some(Ok(m)) = s.recv().await {
        match m {
            Message::Binary(b) if &b[..] == b"exit" => {
                let _ = s
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: "exited".into(),
                    })))
                    .await;
                return;
            }
            Message::Binary(b) => {
                let _ = s.send(Message::Binary(b)).await;
            }
            Message::Text(t) => {
                let r: api::WsClientMsg = serde_json::from_str(t.as_str()).unwrap();
                let api::WsClientMsg::Resize { rows, cols } = r;
                let _ = s
                    .send(Message::Binary(
                        format!("size {rows}x{cols}").into_bytes().into(),
                    ))
                    .await;
            }
            _ => {}
        }
    }
}

async fn piped_ws(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut s: WebSocket| async move {
        let first = match s.recv().await {
            Some(Ok(Message::Text(t))) => t,
            _ => return,
        };
        let start: api::PipedStart = serde_json::from_str(first.as_str()).unwrap();
        let hello = serde_json::to_string(&api::WsServerMsg::Session {
            session_id: "p1".into(),
        })
        .unwrap();
        let _ = s.send(Message::Text(hello.into())).await;
        let _ = s.send(Message::Text(start.cmd.join(" ").into())).await;
        if let Some(Ok(Message::Text(t))) = s.recv().await {
            let _ = s
                .send(Message::Text(format!("stdin:{}", t.as_str()).into()))
                .await;
        }
        let exit = serde_json::to_string(&api::WsServerMsg::Exit { exit_code: 5 }).unwrap();
        let _ = s.send(Message::Text(exit.into())).await;
        let _ = s
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "".into(),
            })))
            .await;
    })
}

fn app(st: St) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async {
                with_version(
                    Json(api::Health {
                        status: "ok".into(),
                        uptime: "1s".into(),
                        version: "9.9.9".into(),
                        engine: bhatti_api::EngineKind::Qemu,
                    })
                    .into_response(),
                )
            }),
        )
        .route("/sandboxes", get(list).post(create))
        .route("/sandboxes/{id}", get(get_one).delete(destroy))
        .route("/sandboxes/{id}/exec", post(exec))
        .route(
            "/sandboxes/{id}/files",
            get(files_get).head(files_head).put(files_put),
        )
        .route("/sandboxes/{id}/ws", get(shell_ws))
        .route("/sandboxes/{id}/exec/ws", get(piped_ws))
        .route("/secrets/{name}", axum::routing::delete(delete_secret))
        .with_state(st)
}

async fn tcp_server() -> (String, St) {
    let st: St = Arc::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let router = app(st.clone());
    tokio::spawn(async move { axum::serve(l, router).await });
    (url, st)
}

fn client(url: &str, token: Option<&str>) -> Client {
    Client::new(ClientConfig::new(
        Endpoint::parse(url).unwrap(),
        token.map(str::to_string),
    ))
    .unwrap()
}

#[tokio::test]
async fn http_calls_over_tcp() {
    let (url, st) = tcp_server().await;
    let c = client(&url, Some("bht_test"));

    let h = c.health().await.unwrap();
    assert_eq!(h.engine, "qemu");
    assert_eq!(c.server_version().as_deref(), Some("9.9.9"));

    let l = c
        .list_sandboxes(&[("team".into(), "a b".into()), ("x/y".into(), "".into())])
        .await
        .unwrap();
    assert_eq!(l[0].name, "web");
    assert_eq!(st.lock().unwrap().queries[0], "label=team=a%20b&label=x/y=");
    assert_eq!(
        st.lock().unwrap().auth[0].as_deref(),
        Some("Bearer bht_test")
    );

    let new = c
        .create_sandbox(&api::CreateSandbox {
            name: Some("fresh".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!new.existing);
    assert_eq!(new.sandbox.name, "fresh");
    let old = c
        .create_sandbox(&api::CreateSandbox {
            name: Some("old".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(old.existing);

    let e = c
        .fork_sandbox("missing", &api::CreateSandbox::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.api().and_then(|a| a.code), Some(api::ErrorCode::NotFound));
    assert_eq!(
        e.hint_for(None, bhatti_client::Resource::Sandbox)
            .as_deref(),
        Some("Check sandbox name: bhatti ls")
    );

    // Path segments are encoded and decoded back by the server.
    assert_eq!(c.get_sandbox("a b/c").await.unwrap().name, "decoded");
    match c.get_sandbox("boom").await.unwrap_err() {
        ClientError::Api(a) => {
            assert_eq!(a.status, 500);
            assert_eq!(a.request_id.as_deref(), Some("req_00000000000000aa"));
            assert_eq!(a.to_string(), "500: internal error");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.destroy_sandbox("web").await.unwrap().status, "destroyed");
    assert_eq!(c.delete_secret("X").await.unwrap().status, "deleted");

    // exec: buffered, detached, streamed
    let req = api::ExecRequest {
        cmd: vec!["echo".into(), "hi".into()],
        ..Default::default()
    };
    let r = c.exec("web", &req).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (7, "echo hi"));
    let d = c.exec_detached("web", &req).await.unwrap();
    assert_eq!(d.pid, 42);
    let mut s = c.exec_stream("web", &req).await.unwrap();
    let mut evs = Vec::new();
    while let Some(ev) = s.next().await {
        evs.push(ev.unwrap());
    }
    assert_eq!(
        evs,
        vec![
            api::ExecEvent::Stdout {
                data: "hi\n".into()
            },
            api::ExecEvent::Stderr { data: "e".into() },
            api::ExecEvent::Exit { exit_code: 3 },
        ]
    );

    // files
    let dl = c
        .read_file("web", "/etc/hostname", ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(dl.size, Some(11));
    assert_eq!(&dl.bytes().await.unwrap()[..], b"hello world");
    assert_eq!(c.list_files("web", "/").await.unwrap()[0].name, "a");
    let stat = c.stat_file("web", "/work").await.unwrap();
    assert_eq!(
        (stat.size, stat.mode.as_str(), stat.is_dir),
        (4096, "0755", true)
    );
    c.write_file("web", "/w s/f", Bytes::from_static(b"abc"), Some("0755"))
        .await
        .unwrap();
    c.write_file("web", "/empty", Bytes::new(), None)
        .await
        .unwrap();
    let up = st.lock().unwrap().uploads.clone();
    assert_eq!(
        up[0],
        ("path=/w%20s/f&mode=0755".into(), Some("3".into()), 3)
    );
    assert_eq!(up[1], ("path=/empty".into(), Some("0".into()), 0));

    // no token → no header
    let anon = client(&url, None);
    anon.list_sandboxes(&[]).await.unwrap();
    assert_eq!(st.lock().unwrap().auth.last().unwrap(), &None);
}

#[tokio::test]
async fn websockets() {
    let (url, st) = tcp_server().await;
    let c = client(&url, Some("bht_ws"));

    let mut sh = c.shell("web", false, None).await.unwrap();
    assert_eq!(sh.session_id(), "s1");
    assert_eq!(
        st.lock().unwrap().auth.last().unwrap().as_deref(),
        Some("Bearer bht_ws")
    );
    sh.resize(40, 120).await.unwrap();
    assert_eq!(
        sh.recv().await.unwrap().unwrap(),
        ShellEvent::Output(Bytes::from_static(b"size 40x120"))
    );
    let (mut w, mut r) = sh.split();
    w.send_input(b"ls\r").await.unwrap();
    assert_eq!(
        r.recv().await.unwrap().unwrap(),
        ShellEvent::Output(Bytes::from_static(b"ls\r"))
    );
    w.send_input(b"exit").await.unwrap();
    assert_eq!(
        r.recv().await.unwrap().unwrap(),
        ShellEvent::Closed {
            code: Some(1000),
            reason: "exited".into()
        }
    );

    let sh2 = c.shell("web", true, None).await.unwrap();
    assert_eq!(sh2.session_id(), "s2");
    let _ = sh2.close().await;

    match c.shell("web", false, Some("bad")).await {
        Err(ClientError::Protocol(m)) => assert_eq!(m, "attach error: no such session"),
        other => panic!("{other:?}"),
    }

    // A refused upgrade is an API error.
    match c.shell("missing", false, None).await {
        Err(e) => assert_eq!(e.status(), Some(404), "{e:?}"),
        Ok(_) => panic!("upgrade should fail"),
    }

    let start = api::PipedStart {
        cmd: vec!["cat".into()],
        ..Default::default()
    };
    let mut p = c.exec_ws("web", &start, None).await.unwrap();
    assert_eq!(p.session_id(), "p1");
    assert_eq!(
        p.recv().await.unwrap().unwrap(),
        PipedEvent::Output("cat".into())
    );
    p.write_stdin(b"hello").await.unwrap();
    assert_eq!(
        p.recv().await.unwrap().unwrap(),
        PipedEvent::Output("stdin:hello".into())
    );
    assert_eq!(p.recv().await.unwrap().unwrap(), PipedEvent::Exit(5));
    assert!(matches!(
        p.recv().await.unwrap().unwrap(),
        PipedEvent::Closed {
            code: Some(1000),
            ..
        }
    ));
}

#[tokio::test]
async fn unix_socket_transport() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let st: St = Arc::default();
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let router = app(st.clone());
    tokio::spawn(async move { axum::serve(l, router).await });

    let c = Client::new(ClientConfig::new(
        Endpoint::Unix(sock.clone()),
        Some("k".into()),
    ))
    .unwrap();
    assert_eq!(c.list_sandboxes(&[]).await.unwrap().len(), 1);
    let sh = c.shell("web", false, None).await.unwrap();
    assert_eq!(sh.session_id(), "s1");

    // and the default resolution picks the socket up from the data dir
    let env = bhatti_client::Environment {
        bhatti_data_dir: Some(dir.path().to_path_buf()),
        home: Some(dir.path().join("home")),
        ..Default::default()
    };
    let cfg = ClientConfig::resolve_with(&Default::default(), &env).unwrap();
    assert_eq!(cfg.endpoint, Endpoint::Unix(sock));
}
