//! `filesystem.Filesystem`: stat, list, make-directory, move, remove and
//! watches, translated onto [`crate::service::guest_fs`] and
//! [`crate::service::watch`].

use std::time::Duration;

use bhatti_e2b::buffa::EnumValue;
use bhatti_e2b::buffa_types::google::protobuf::Timestamp;
use bhatti_e2b::connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use bhatti_e2b::proto::filesystem::{
    watch_dir_response, CreateWatcherRequest, CreateWatcherResponse, EntryInfo, EventType,
    FileType, Filesystem, FilesystemEvent, GetWatcherEventsRequest, GetWatcherEventsResponse,
    ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse,
    RemoveRequest, RemoveResponse, RemoveWatcherRequest, RemoveWatcherResponse, StatRequest,
    StatResponse, WatchDirRequest, WatchDirResponse,
};
use futures_util::StreamExt;

use super::{connect_error, target};
use crate::service::guest_fs::{self, Entry};
use crate::service::watch::{self, Change, FsEvent};
use crate::state::Shared;

/// Keepalives on a quiet watch stream.
const KEEPALIVE: Duration = Duration::from_secs(50);

pub struct FilesystemService {
    pub st: Shared,
}

/// `drwxr-xr-x`, as Go's `FileMode.String()` spells permissions.
fn permissions(is_dir: bool, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(if is_dir { 'd' } else { '-' });
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

pub fn entry_info(e: &Entry) -> EntryInfo {
    // The agent reports permissions as four octal digits.
    let mode = u32::from_str_radix(&e.info.mode, 8).unwrap_or(0) & 0o7777;
    EntryInfo {
        name: e.info.name.clone(),
        r#type: EnumValue::Known(if e.info.is_dir {
            FileType::FILE_TYPE_DIRECTORY
        } else {
            FileType::FILE_TYPE_FILE
        }),
        path: e.path.clone(),
        size: e.info.size,
        mode,
        permissions: permissions(e.info.is_dir, mode),
        modified_time: Timestamp {
            seconds: e.info.mtime,
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
}

fn fs_event(ev: FsEvent, include_entry: bool) -> FilesystemEvent {
    FilesystemEvent {
        name: ev.name,
        r#type: EnumValue::Known(match ev.change {
            Change::Create => EventType::EVENT_TYPE_CREATE,
            Change::Write => EventType::EVENT_TYPE_WRITE,
            Change::Remove => EventType::EVENT_TYPE_REMOVE,
            Change::Rename => EventType::EVENT_TYPE_RENAME,
            Change::Chmod => EventType::EVENT_TYPE_CHMOD,
        }),
        entry: match ev.entry.filter(|_| include_entry) {
            Some(e) => entry_info(&e).into(),
            None => Default::default(),
        },
        ..Default::default()
    }
}

fn watch_event(e: watch_dir_response::Event) -> WatchDirResponse {
    WatchDirResponse {
        event: Some(e),
        ..Default::default()
    }
}

// See the note on `ProcessService`: concrete messages, not `impl Encodable`.
#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let sb = target(&ctx)?;
        let path = request.to_owned_message().path;
        let e = guest_fs::stat(&self.st, &sb, &path)
            .await
            .map_err(connect_error)?;
        Response::ok(StatResponse {
            entry: entry_info(&e).into(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let sb = target(&ctx)?;
        let path = request.to_owned_message().path;
        let e = guest_fs::make_dir(&self.st, &sb, &path)
            .await
            .map_err(connect_error)?
            .ok_or_else(|| ConnectError::already_exists(format!("{path} already exists")))?;
        Response::ok(MakeDirResponse {
            entry: entry_info(&e).into(),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let sb = target(&ctx)?;
        let req = request.to_owned_message();
        let e = guest_fs::rename(&self.st, &sb, &req.source, &req.destination)
            .await
            .map_err(connect_error)?;
        Response::ok(MoveResponse {
            entry: entry_info(&e).into(),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let sb = target(&ctx)?;
        let req = request.to_owned_message();
        let entries = guest_fs::list(&self.st, &sb, &req.path, req.depth)
            .await
            .map_err(connect_error)?;
        Response::ok(ListDirResponse {
            entries: entries.iter().map(entry_info).collect(),
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let sb = target(&ctx)?;
        let path = request.to_owned_message().path;
        guest_fs::remove(&self.st, &sb, &path)
            .await
            .map_err(connect_error)?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let sb = target(&ctx)?;
        let req = request.to_owned_message();
        let rx = watch::watch(&self.st, &sb, &req.path, req.recursive)
            .await
            .map_err(connect_error)?;
        let include = req.include_entry;
        let first = futures_util::stream::once(async {
            watch_event(watch_dir_response::Event::Start(Box::default()))
        });
        // 50 s from now is always representable; were it not, the first
        // keepalive would go at once.
        let now = tokio::time::Instant::now();
        let first_ping = now.checked_add(KEEPALIVE).unwrap_or(now);
        let rest = futures_util::stream::unfold(
            (rx, tokio::time::interval_at(first_ping, KEEPALIVE)),
            move |(mut rx, mut tick)| async move {
                tokio::select! {
                    ev = rx.recv() => ev.map(|ev| {
                        (watch_event(watch_dir_response::Event::Filesystem(Box::new(fs_event(ev, include)))), (rx, tick))
                    }),
                    _ = tick.tick() => Some((watch_event(watch_dir_response::Event::Keepalive(Box::default())), (rx, tick))),
                }
            },
        );
        Ok(Response::stream(first.chain(rest).map(Ok)))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let sb = target(&ctx)?;
        let req = request.to_owned_message();
        let watcher_id = self
            .st
            .watchers
            .create(&self.st, &sb, &req.path, req.recursive)
            .await
            .map_err(connect_error)?;
        Response::ok(CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        let sb = target(&ctx)?;
        let id = request.to_owned_message().watcher_id;
        let events = self.st.watchers.take(&sb.id, &id).map_err(connect_error)?;
        Response::ok(GetWatcherEventsResponse {
            events: events.into_iter().map(|e| fs_event(e, true)).collect(),
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        let sb = target(&ctx)?;
        let id = request.to_owned_message().watcher_id;
        self.st
            .watchers
            .remove(&sb.id, &id)
            .map_err(connect_error)?;
        Response::ok(RemoveWatcherResponse::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_gos() {
        assert_eq!(permissions(true, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(false, 0o640), "-rw-r-----");
    }
}
