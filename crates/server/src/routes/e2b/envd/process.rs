//! `process.Process`: E2B's commands and PTYs, translated onto the
//! service layer's process table ([`crate::service::processes`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bhatti_e2b::connectrpc::{
    ConnectError, InboundStream, RequestContext, Response, ServiceRequest, ServiceResult,
    ServiceStream,
};
use bhatti_e2b::proto::process::{
    process_event, process_input, process_selector, stream_input_request, CloseStdinRequest,
    CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest, ListResponse, Process,
    ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector, SendInputRequest, SendInputResponse,
    SendSignalRequest, SendSignalResponse, Signal, StartRequest, StartResponse, StreamInputRequest,
    StreamInputResponse, UpdateRequest, UpdateResponse, PTY,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{connect_error, target};
use crate::service::processes::{Output, Proc, Selector, Spec};
use crate::state::Shared;

/// Sent when the client names no interval: often enough for idle-timeout
/// proxies, rarely enough to cost nothing.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);
/// The SDKs' header for the keepalive interval, in seconds.
const KEEPALIVE_HEADER: &str = "keepalive-ping-interval";
/// The longest keepalive interval honoured (a day; longer asks are cut to
/// it): no proxy waits that long, and the first ping's deadline stays far
/// from the clock's end.
const MAX_KEEPALIVE: Duration = Duration::from_secs(86_400);

pub struct ProcessService {
    pub st: Shared,
}

fn selector(s: &ProcessSelector) -> Result<Selector, ConnectError> {
    match &s.selector {
        Some(process_selector::Selector::Pid(pid)) => Ok(Selector::Pid(*pid)),
        Some(process_selector::Selector::Tag(tag)) => Ok(Selector::Tag(tag.clone())),
        None => Err(ConnectError::invalid_argument(
            "process selector (pid or tag) is required",
        )),
    }
}

fn find(
    st: &Shared,
    ctx: &RequestContext,
    sel: Option<&ProcessSelector>,
) -> Result<Arc<Proc>, ConnectError> {
    let sb = target(ctx)?;
    let sel = selector(sel.ok_or_else(|| ConnectError::invalid_argument("process is required"))?)?;
    st.processes.get(&sb.id, &sel).map_err(connect_error)
}

fn info(p: &Proc) -> ProcessInfo {
    ProcessInfo {
        config: ProcessConfig {
            cmd: p.spec.cmd.clone(),
            args: p.spec.args.clone(),
            envs: p
                .spec
                .envs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cwd: p.spec.cwd.clone(),
            ..Default::default()
        }
        .into(),
        pid: p.pid,
        tag: p.spec.tag.clone(),
        ..Default::default()
    }
}

fn pty_size(pty: Option<&PTY>) -> Result<Option<(u16, u16)>, ConnectError> {
    let Some(pty) = pty else { return Ok(None) };
    let size = pty.size.as_option();
    let rows = size.map_or(24, |s| s.rows);
    let cols = size.map_or(80, |s| s.cols);
    let fit = |v: u32, what: &str| {
        u16::try_from(v)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ConnectError::invalid_argument(format!("pty {what} must be 1 to 65535")))
    };
    Ok(Some((fit(rows, "rows")?, fit(cols, "cols")?)))
}

fn event(e: process_event::Event) -> ProcessEvent {
    ProcessEvent {
        event: Some(e),
        ..Default::default()
    }
}

fn start_event(pid: u32) -> ProcessEvent {
    event(process_event::Event::Start(Box::new(
        process_event::StartEvent {
            pid,
            ..Default::default()
        },
    )))
}

fn keepalive_event() -> ProcessEvent {
    event(process_event::Event::Keepalive(Box::default()))
}

fn output_event(o: Output) -> ProcessEvent {
    use process_event::data_event::Output as Data;
    let data = |d: Data| {
        event(process_event::Event::Data(Box::new(
            process_event::DataEvent {
                output: Some(d),
                ..Default::default()
            },
        )))
    };
    match o {
        Output::Stdout(b) => data(Data::Stdout(b)),
        Output::Stderr(b) => data(Data::Stderr(b)),
        Output::Pty(b) => data(Data::Pty(b)),
        Output::End(end) => event(process_event::Event::End(Box::new(
            process_event::EndEvent {
                exit_code: end.exit_code,
                exited: end.exited,
                status: end.status,
                error: end.error,
                ..Default::default()
            },
        ))),
    }
}

fn keepalive_interval(ctx: &RequestContext) -> Duration {
    keepalive_from(ctx.header(KEEPALIVE_HEADER).and_then(|v| v.to_str().ok()))
}

/// The keepalive interval a header value asks for: whole seconds, at most
/// [`MAX_KEEPALIVE`]; absent, zero or not a number = the default.
fn keepalive_from(header: Option<&str>) -> Duration {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, |s| {
            Duration::from_secs(s).min(MAX_KEEPALIVE)
        })
}

/// The event stream of one subscriber: a start event, then the process's
/// output with keepalives in quiet stretches, ending after its end event.
fn events(
    pid: u32,
    rx: mpsc::Receiver<Output>,
    every: Duration,
) -> impl futures_util::Stream<Item = ProcessEvent> + Send {
    let first = futures_util::stream::once(async move { start_event(pid) });
    // `every` is at most MAX_KEEPALIVE, so the sum is always there; were it
    // not, the first ping would go at once.
    let now = tokio::time::Instant::now();
    let first_ping = now.checked_add(every).unwrap_or(now);
    let rest = futures_util::stream::unfold(
        (rx, tokio::time::interval_at(first_ping, every), false),
        |(mut rx, mut tick, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => {
                        let end = matches!(o, Output::End(_));
                        Some((output_event(o), (rx, tick, end)))
                    }
                    // The table dropped the subscriber without an end
                    // (the daemon is shutting down).
                    None => None,
                },
                _ = tick.tick() => Some((keepalive_event(), (rx, tick, false))),
            }
        },
    );
    first.chain(rest)
}

// The generated trait returns `impl Encodable`; the concrete message is
// the one encodable every method here answers with.
#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let sb = target(&ctx)?;
        let processes = self
            .st
            .processes
            .list(&sb.id)
            .iter()
            .map(|p| info(p))
            .collect();
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let req = request.to_owned_message();
        let p = find(&self.st, &ctx, req.process.as_option())?;
        let rx = p.subscribe().await;
        let s = events(p.pid, rx, keepalive_interval(&ctx)).map(|e| {
            Ok(ConnectResponse {
                event: e.into(),
                ..Default::default()
            })
        });
        Ok(Response::stream(s))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let req = request.to_owned_message();
        let sb = target(&ctx)?;
        let cfg = req
            .process
            .as_option()
            .ok_or_else(|| ConnectError::invalid_argument("process is required"))?;
        let cwd = match cfg.cwd.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => Some(
                crate::service::guest_fs::resolve(&self.st, &sb, c)
                    .await
                    .map_err(connect_error)?,
            ),
            None => None,
        };
        let spec = Spec {
            cmd: cfg.cmd.clone(),
            args: cfg.args.clone(),
            envs: cfg
                .envs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            cwd,
            tag: req.tag.clone(),
            pty: pty_size(req.pty.as_option())?,
            // Absent means open: older SDKs always keep stdin.
            stdin: req.stdin.unwrap_or(true),
        };
        let (p, rx) = self
            .st
            .processes
            .start(&self.st, &sb, spec)
            .await
            .map_err(connect_error)?;
        let s = events(p.pid, rx, keepalive_interval(&ctx)).map(|e| {
            Ok(StartResponse {
                event: e.into(),
                ..Default::default()
            })
        });
        Ok(Response::stream(s))
    }

    async fn update(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let req = request.to_owned_message();
        let p = find(&self.st, &ctx, req.process.as_option())?;
        if let Some((rows, cols)) = pty_size(req.pty.as_option())? {
            p.resize(rows, cols).await.map_err(connect_error)?;
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        ctx: RequestContext,
        mut requests: InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        let mut proc: Option<Arc<Proc>> = None;
        while let Some(msg) = requests.next().await {
            let msg = msg?.to_owned_message();
            match msg.event {
                Some(stream_input_request::Event::Start(s)) => {
                    proc = Some(find(&self.st, &ctx, s.process.as_option())?);
                }
                Some(stream_input_request::Event::Data(d)) => {
                    let p = proc.as_ref().ok_or_else(|| {
                        ConnectError::failed_precondition(
                            "the stream must start with a start event",
                        )
                    })?;
                    if let Some(data) = input_bytes(d.input.as_option()) {
                        p.input(data).await.map_err(connect_error)?;
                    }
                }
                Some(stream_input_request::Event::Keepalive(_)) | None => {}
            }
        }
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let req = request.to_owned_message();
        let p = find(&self.st, &ctx, req.process.as_option())?;
        if let Some(data) = input_bytes(req.input.as_option()) {
            p.input(data).await.map_err(connect_error)?;
        }
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let req = request.to_owned_message();
        let p = find(&self.st, &ctx, req.process.as_option())?;
        match req.signal {
            bhatti_e2b::buffa::EnumValue::Known(
                Signal::SIGNAL_SIGKILL | Signal::SIGNAL_SIGTERM,
            ) => {
                // lohar delivers SIGKILL to the whole group for both: there
                // is no graceful stop in its protocol yet (docs/e2b.md).
                p.kill().await.map_err(connect_error)?;
            }
            _ => {
                return Err(ConnectError::invalid_argument(
                    "signal must be SIGTERM or SIGKILL",
                ))
            }
        }
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let req = request.to_owned_message();
        let p = find(&self.st, &ctx, req.process.as_option())?;
        p.close_stdin().await.map_err(connect_error)?;
        Response::ok(CloseStdinResponse::default())
    }
}

fn input_bytes(i: Option<&bhatti_e2b::proto::process::ProcessInput>) -> Option<Vec<u8>> {
    match &i?.input {
        Some(process_input::Input::Stdin(b)) | Some(process_input::Input::Pty(b)) => {
            Some(b.clone())
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_header() {
        assert_eq!(keepalive_from(None), DEFAULT_KEEPALIVE);
        assert_eq!(keepalive_from(Some("0")), DEFAULT_KEEPALIVE);
        assert_eq!(keepalive_from(Some("soon")), DEFAULT_KEEPALIVE);
        assert_eq!(keepalive_from(Some(" 5 ")), Duration::from_secs(5));
        // A huge interval (once an overflowing deadline) is cut to a day.
        let max = u64::MAX.to_string();
        assert_eq!(keepalive_from(Some(&max)), MAX_KEEPALIVE);
    }
}
