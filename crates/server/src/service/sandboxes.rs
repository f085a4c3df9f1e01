//! Sandboxes as the service layer sees them: create (direct, from a
//! template, or a fork), destroy, stop, start, and lifetimes. Both the
//! native API and the E2B API call these; the handlers only translate.
//!
//! Create writes the store row *before* the engine boots anything, under a
//! server-chosen ID: the quota and the name's uniqueness are decided in that
//! insert (so two racing creates never both boot), volume attachments can be
//! taken before the VM sees the disk, and a daemon that dies mid-create
//! leaves a row that recovery marks with a reason instead of an unknown VM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bhatti_api as api;
use bhatti_engine::contract::{GuestFile, ResumeSpec, SandboxSpec, VolumeAttach};
use bhatti_engine::net::EgressPolicy;
use bhatti_store::{ExpiryAction, NewSandbox, Sandbox, SandboxStatus, User};

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::service::volumes;
use crate::state::Shared;
use crate::validate;

/// The longest lifetime a create or an extension may ask for (30 days).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// What [`create`] made, or the live sandbox of that name it found instead
/// (create is idempotent by name).
#[derive(Debug)]
pub struct Created {
    pub sandbox: Sandbox,
    pub existing: bool,
}

/// `timeout_secs` from now, in storage format.
pub fn expiry_from_now(timeout_secs: u64) -> ServiceResult<String> {
    if timeout_secs > MAX_TIMEOUT_SECS {
        return Err(ServiceError::bad_request(format!(
            "timeout {timeout_secs}s is longer than the {MAX_TIMEOUT_SECS}s limit"
        )));
    }
    let at = SystemTime::now()
        .checked_add(Duration::from_secs(timeout_secs))
        .ok_or_else(|| ServiceError::bad_request("timeout is out of range"))?;
    Ok(bhatti_store::time::format_ts(at))
}

fn expiry_action(a: Option<&str>) -> ServiceResult<ExpiryAction> {
    match a {
        None | Some("") => Ok(ExpiryAction::Kill),
        Some(a) => a.parse().map_err(ServiceError::from),
    }
}

/// The native API's lifetime change, in its terms: a timeout of 0 clears
/// the lifetime as none does, and an empty action keeps the current one.
pub async fn set_timeout_as_asked(
    st: &Shared,
    user: &User,
    id: &str,
    timeout_secs: Option<u64>,
    on_expiry: Option<&str>,
) -> ServiceResult<Sandbox> {
    let action = match on_expiry {
        None | Some("") => None,
        Some(a) => Some(a.parse().map_err(ServiceError::from)?),
    };
    set_timeout(st, user, id, timeout_secs.filter(|s| *s > 0), action).await
}

/// Sets a sandbox's lifetime to `timeout_secs` from now (`None` clears it:
/// the sandbox lives until destroyed); `action` defaults to the current one.
pub async fn set_timeout(
    st: &Shared,
    user: &User,
    id: &str,
    timeout_secs: Option<u64>,
    action: Option<ExpiryAction>,
) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    let at = timeout_secs.map(expiry_from_now).transpose()?;
    let action = action.unwrap_or(sb.on_expiry);
    let sid = sb.id.clone();
    st.db(move |s| s.set_expiry(&sid, at.as_deref(), action))
        .await
}

/// How often the reaper looks for lifetimes that are over.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Runs [`reap_expired`] every [`REAP_EVERY`] until `stop` turns true.
pub async fn reap_loop(st: Shared, stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = crate::ticker::Ticker::new(REAP_EVERY, stop);
    while ticker.tick().await {
        reap_expired(&st).await;
    }
}

/// Ends the lifetimes that are over: kills or stops each expired sandbox
/// (a stop clears the lifetime; the next start or connect sets a new one).
pub async fn reap_expired(st: &Shared) {
    let now = bhatti_store::time::now();
    let rows = match st.db(move |s| s.expired_sandboxes(&now)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e.message, "expiry: cannot list sandboxes");
            return;
        }
    };
    // A lifetime that ran out during its create ends once it is made.
    for sb in rows.into_iter().filter(|r| !st.is_creating(&r.id)) {
        let (id, action) = (sb.id.clone(), sb.on_expiry);
        tracing::info!(sandbox = id, action = action.as_str(), "lifetime over");
        let r = match action {
            ExpiryAction::Kill => destroy_row(st, sb).await.map(|_| ()),
            ExpiryAction::Pause => {
                let r = if sb.status == SandboxStatus::Running
                    && st.engine.vm_state(&sb.id).is_some()
                {
                    st.engine.stop(&sb.id).await.map_err(ServiceError::from)
                } else {
                    Ok(())
                };
                if r.is_ok() {
                    let _ = st.persist(&sb.id).await;
                    st.events.emit(
                        &sb.user_id,
                        &sb.id,
                        "sandbox.stopped",
                        serde_json::json!({"reason": "expired"}),
                    );
                }
                let sid = sb.id.clone();
                let cleared = st
                    .db(move |s| s.set_expiry(&sid, None, ExpiryAction::Pause))
                    .await;
                r.and(cleared.map(|_| ()))
            }
        };
        if let Err(e) = r {
            tracing::warn!(sandbox = id, error = %e.message, "expiry failed");
        }
    }
}

/// The request's egress policy; `None` when it names none.
pub fn egress(e: Option<&api::Egress>) -> ServiceResult<Option<EgressPolicy>> {
    let Some(e) = e else { return Ok(None) };
    match e {
        api::Egress::Mode(m) if m == "public" => Ok(EgressPolicy::Public),
        api::Egress::Mode(m) if m == "deny" => Ok(EgressPolicy::Deny),
        api::Egress::Mode(m) => Err(ServiceError::bad_request(format!(
            "egress {m:?}: expected \"public\", \"deny\" or a list of CIDRs"
        ))),
        api::Egress::Allow(list) if list.len() > 256 => {
            Err(ServiceError::bad_request("egress: at most 256 CIDRs"))
        }
        api::Egress::Allow(list) => list
            .iter()
            .map(|c| validate::cidr(c))
            .collect::<ServiceResult<Vec<_>>>()
            .map(EgressPolicy::Allow),
    }
    .map(Some)
}

pub fn decode_files(files: &[api::CreateFile]) -> ServiceResult<BTreeMap<String, GuestFile>> {
    let mut out = BTreeMap::new();
    for f in files {
        if f.guest_path.is_empty() {
            return Err(ServiceError::bad_request("files: guest_path required"));
        }
        validate::guest_path(&f.guest_path)?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(f.content.as_bytes())
            .map_err(|e| {
                ServiceError::bad_request(format!("files: {}: bad base64: {e}", f.guest_path))
            })?;
        let mode = f.mode.clone().unwrap_or_else(|| "0644".into());
        validate::file_mode(&mode).map_err(|e| e.context(&format!("files: {}", f.guest_path)))?;
        out.insert(f.guest_path.clone(), GuestFile { content, mode });
    }
    Ok(out)
}

/// Template defaults merged under the request (the request wins).
fn apply_template(req: &mut api::CreateSandbox, t: &bhatti_store::Template) -> ServiceResult<()> {
    if req.name.is_none() {
        // The template's name, cut so that `-<6 hex>` still fits a name.
        let stem = &t.name[..t.name.len().min(56)];
        req.name = Some(format!("{stem}-{}", bhatti_store::ids::random_hex(3)));
    }
    if req.image.is_none() && !t.image.is_empty() {
        req.image = Some(t.image.clone());
    }
    if req.cpus.is_none() {
        req.cpus = Some(f64::from(t.cpus));
    }
    if req.memory_mb.is_none() {
        req.memory_mb = Some(u64::from(t.memory_mb));
    }
    if req.disk_size_mb.is_none() && t.disk_size_mb > 0 {
        req.disk_size_mb = Some(t.disk_size_mb);
    }
    for (k, v) in &t.env {
        req.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for s in &t.secrets {
        if !req.secrets.contains(s) {
            req.secrets.push(s.clone());
        }
    }
    if req.init.is_none() && !t.init.is_empty() {
        req.init = Some(t.init.clone());
    }
    for (k, v) in &t.labels {
        req.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let files: Vec<api::CreateFile> = serde_json::from_value(t.files.clone()).unwrap_or_default();
    for f in files {
        if !req.files.iter().any(|x| x.guest_path == f.guest_path) {
            req.files.push(f);
        }
    }
    let vols: Vec<api::VolumeMount> = serde_json::from_value(t.volumes.clone()).unwrap_or_default();
    for v in vols {
        if !req.persistent_volumes.iter().any(|x| x.name == v.name) {
            req.persistent_volumes.push(v);
        }
    }
    Ok(())
}

/// [`create`] for a caller that may go away: the create runs to its end in
/// a task of its own (a create cut off halfway, between the row and the
/// engine, is what used to leave `unknown` rows, namespaces and addresses
/// behind), and if the caller is gone by then, what it made is destroyed:
/// all or nothing, and "nothing" when nobody is there to be told.
pub async fn create_for_caller(
    st: &Shared,
    user: &User,
    req: api::CreateSandbox,
) -> ServiceResult<Created> {
    let (st2, user2) = (st.clone(), user.clone());
    let task = st
        .creates
        .spawn(async move { create(&st2, &user2, req).await });
    let mut guard = Abandoned {
        st: st.clone(),
        task: Some(task),
    };
    let r = match guard.task.as_mut() {
        Some(t) => t.await.map_err(ServiceError::from)?,
        None => return Err(ServiceError::internal("create task missing")),
    };
    guard.task = None;
    r
}

/// Destroys what a create made for a caller that went away before it
/// finished (its future was dropped while the task ran).
struct Abandoned {
    st: Shared,
    task: Option<tokio::task::JoinHandle<ServiceResult<Created>>>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let st = self.st.clone();
        let tracker = st.creates.clone();
        tracker.spawn(async move {
            match task.await {
                Ok(Ok(c)) if !c.existing => {
                    let id = c.sandbox.id.clone();
                    tracing::info!(
                        sandbox = id,
                        "the client left during create; destroying what it made"
                    );
                    if let Err(e) = destroy_row(&st, c.sandbox).await {
                        tracing::warn!(sandbox = id, error = %e.message, "destroying an abandoned create failed");
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::info!(error = %e.message, "an abandoned create failed"),
                Err(e) => tracing::warn!(error = %e, "an abandoned create's task failed"),
            }
        });
    }
}

pub async fn create(
    st: &Shared,
    user: &User,
    mut req: api::CreateSandbox,
) -> ServiceResult<Created> {
    if let Some(tid) = req.template_id.clone().filter(|t| !t.is_empty()) {
        let uid = user.id.clone();
        let t = st
            .db(move |s| s.template(&uid, &tid))
            .await
            .map_err(|e| e.or_not_found(|| "template not found".into()))?;
        apply_template(&mut req, &t)?;
    }
    let q = user.quotas;
    let cpus = validate::cpus(req.cpus, 1)?;
    let disk_size_mb = req.disk_size_mb.unwrap_or(0);
    validate::disk_size_mb(disk_size_mb)?;
    validate::env(&req.env)?;
    let memory_mb = match req.memory_mb {
        None | Some(0) => st
            .cfg
            .default_memory_mb
            .min(q.max_memory_mb_per_sandbox.max(128)),
        Some(m) if m < 128 => {
            return Err(ServiceError::bad_request(format!(
                "memory_mb must be at least 128, got {m}"
            )))
        }
        Some(m) => {
            u32::try_from(m).map_err(|_| ServiceError::bad_request("memory_mb is too large"))?
        }
    };
    if cpus > q.max_cpus_per_sandbox {
        return Err(ServiceError::forbidden(format!(
            "cpus {cpus} exceeds your limit of {} per sandbox",
            q.max_cpus_per_sandbox
        )));
    }
    if memory_mb > q.max_memory_mb_per_sandbox {
        return Err(ServiceError::forbidden(format!(
            "memory_mb {memory_mb} exceeds your limit of {} per sandbox",
            q.max_memory_mb_per_sandbox
        )));
    }
    let name = req
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("sandbox-{}", bhatti_store::ids::random_hex(3)));
    validate::name("sandbox", &name)?;
    validate::labels(&req.labels)?;
    for v in &req.persistent_volumes {
        validate::name("volume", &v.name)?;
        validate::mount_path(&v.mount)?;
    }
    validate::distinct_mounts(req.persistent_volumes.iter().map(|v| v.mount.as_str()))?;
    for s in &req.secrets {
        validate::secret_name(s)?;
    }
    let egress = egress(req.egress.as_ref())?;
    let files = decode_files(&req.files)?;
    validate::metadata(&req.metadata)?;
    let on_expiry = expiry_action(req.on_expiry.as_deref())?;
    let expires_at = req.timeout_secs.map(expiry_from_now).transpose()?;

    // Idempotent by name: an active sandbox with that name is the answer.
    {
        let (uid, n) = (user.id.clone(), name.clone());
        match st.db(move |s| s.sandbox(&uid, &n)).await {
            Ok(sb) if sb.name == name => {
                return Ok(Created {
                    sandbox: sb,
                    existing: true,
                })
            }
            _ => {}
        }
    }

    // Secrets become env vars named after the secret.
    let mut env = req.env.clone();
    for s in &req.secrets {
        let (uid, n) = (user.id.clone(), s.clone());
        let ct = st
            .db(move |db| db.secret_value(&uid, &n))
            .await
            .map_err(|e| e.or_not_found(|| format!("secret {s:?} not found")))?;
        let pt = st.secrets.decrypt(&ct).map_err(ServiceError::internal)?;
        env.insert(
            s.clone(),
            String::from_utf8(pt).map_err(|_| ServiceError::internal("secret is not UTF-8"))?,
        );
    }
    // With the secrets in, the whole environment must still fit.
    validate::env(&env)?;

    let image = resolve_image(st, user, req.image.as_deref()).await?;
    // The image's Env under the request's (and the secrets').
    if let Some(d) = &image.defaults {
        for (k, v) in &d.env {
            env.entry(k.clone()).or_insert_with(|| v.clone());
        }
        validate::env(&env)?;
    }

    let source = match req.from.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => Some(st.sandbox(user, f).await?),
        None => None,
    };

    let id = bhatti_store::ids::sandbox_id();
    let new = NewSandbox {
        id: id.clone(),
        user_id: user.id.clone(),
        name: name.clone(),
        status: SandboxStatus::Unknown,
        ip: String::new(),
        engine: st.engine_name.to_string(),
        template_id: req.template_id.clone().unwrap_or_default(),
        cpus: source.as_ref().map_or(cpus, |s| s.cpus),
        memory_mb: source.as_ref().map_or(memory_mb, |s| s.memory_mb),
        disk_size_mb,
        image: source
            .as_ref()
            .map_or(image.name.clone(), |s| s.image.clone()),
        labels: req.labels.clone(),
        keep_hot: req.keep_hot,
        vm_state: None,
        generation: 0,
        expires_at,
        on_expiry,
        metadata: req.metadata.clone(),
    };
    let _creating = st.creating(&id);
    match st.db(move |s| s.insert_sandbox(&new)).await {
        Ok(_) => {}
        Err(e) if e.code == ErrorCode::Conflict => {
            let (uid, n) = (user.id.clone(), name.clone());
            let winner = st.db(move |s| s.sandbox(&uid, &n)).await?;
            return Ok(Created {
                sandbox: winner,
                existing: true,
            });
        }
        Err(e) => return Err(e),
    }

    let booted = async {
        if let Some(src) = &source {
            st.ensure_hot(src).await?;
            let info = st
                .engine
                .fork(
                    &src.id,
                    ResumeSpec {
                        id: Some(id.clone()),
                        name: name.clone(),
                        owner_index: user.subnet_index,
                        // None: the fork keeps the source's policy.
                        egress: egress.clone(),
                    },
                )
                .await?;
            st.events.emit(
                &user.id,
                &id,
                "snapshot.forked",
                serde_json::json!({"from": src.id}),
            );
            return Ok::<_, ServiceError>(info);
        }
        let vols = attach_volumes(st, user, &id, &req.persistent_volumes).await?;
        let spec = SandboxSpec {
            id: Some(id.clone()),
            name: name.clone(),
            owner_index: user.subnet_index,
            image: image.path.clone(),
            cpus,
            memory_mb,
            disk_size_mb,
            env,
            files,
            init: req.init.clone().unwrap_or_default(),
            volumes: vols,
            egress: egress.unwrap_or_default(),
            run_as_root: image.defaults.as_ref().is_some_and(|d| d.runs_as_root()),
            user: image
                .defaults
                .as_ref()
                .filter(|d| !d.runs_as_root())
                .map(|d| d.user.clone())
                .unwrap_or_default(),
            cwd: image
                .defaults
                .as_ref()
                .map(|d| d.working_dir.clone())
                .unwrap_or_default(),
        };
        Ok(st.engine.create(spec).await?)
    }
    .await;
    match booted {
        Ok(_) => {
            st.touch(&id);
            let sb = match st.persist(&id).await {
                Ok(sb) => sb,
                // The row went while the engine worked (a DELETE, or the
                // lifetime ran out): what was made goes too. All or nothing.
                Err(e) => {
                    tracing::info!(sandbox = id, error = %e.message, "the row is gone at the end of its create; destroying what it made");
                    let _ = st.engine.destroy(&id).await;
                    let rid = id.clone();
                    let _ = st.db(move |s| s.delete_sandbox(&rid)).await;
                    return Err(if e.code == ErrorCode::NotFound {
                        ServiceError::conflict(format!(
                            "sandbox {name:?} was destroyed while it was being created"
                        ))
                    } else {
                        e
                    });
                }
            };
            st.events.emit(
                &user.id,
                &id,
                "sandbox.created",
                serde_json::json!({"name": sb.name, "cpus": sb.cpus, "memory_mb": sb.memory_mb}),
            );
            Ok(Created {
                sandbox: sb,
                existing: false,
            })
        }
        Err(e) => {
            let _ = st.engine.destroy(&id).await;
            let rid = id.clone();
            let _ = st.db(move |s| s.delete_sandbox(&rid)).await;
            Err(e)
        }
    }
}

/// A sandbox's image: its stored name, its root filesystem (`None`: the
/// engine's default) and the defaults its config gives exec and shell.
struct ResolvedImage {
    name: String,
    path: Option<PathBuf>,
    defaults: Option<bhatti_image::ImageDefaults>,
}

/// The image name a create without one gets: `default_image`, else `base`
/// when it is installed, else `minimal`.
async fn default_image(st: &Shared) -> String {
    if let Some(d) = st.cfg.default_image.clone().filter(|d| !d.is_empty()) {
        return d;
    }
    let base = st
        .db(|s| s.image_exact(bhatti_store::ADMIN_USER, "base"))
        .await
        .is_ok();
    if base { "base" } else { "minimal" }.to_string()
}

/// `image` through the store (own, then admin); `minimal` = the engine's
/// default root filesystem; none = [`default_image`].
async fn resolve_image(
    st: &Shared,
    user: &User,
    image: Option<&str>,
) -> ServiceResult<ResolvedImage> {
    let image = match image.filter(|i| !i.is_empty()) {
        Some(i) => i.to_string(),
        None => default_image(st).await,
    };
    let Some(name) = Some(image.as_str()).filter(|i| *i != "minimal") else {
        return Ok(ResolvedImage {
            name: "minimal".into(),
            path: None,
            defaults: None,
        });
    };
    let (uid, n) = (user.id.clone(), name.to_string());
    match st.db(move |s| s.image(&uid, &n)).await {
        Ok(img) => Ok(ResolvedImage {
            defaults: crate::images::defaults_of(&img),
            path: Some(PathBuf::from(img.file_path)),
            name: img.name,
        }),
        Err(e) if e.code == ErrorCode::NotFound => Err(ServiceError::not_found(format!(
            "image {name:?} not found; `bhatti image pull <ref> --name {name}` or `bhatti image list`"
        ))),
        Err(e) => Err(e),
    }
}

/// Attaches (auto-creating where asked) the requested persistent volumes;
/// on any failure the attachments already taken are released.
async fn attach_volumes(
    st: &Shared,
    user: &User,
    sandbox_id: &str,
    reqs: &[api::VolumeMount],
) -> ServiceResult<Vec<VolumeAttach>> {
    let mut out = Vec::new();
    for v in reqs {
        let r = async {
            let vol = volumes::find_or_create(st, user, v).await?;
            let (vid, sid, mount, ro) = (
                vol.id.clone(),
                sandbox_id.to_string(),
                v.mount.clone(),
                v.read_only,
            );
            st.db(move |s| s.attach_volume(&vid, &sid, &mount, ro))
                .await?;
            Ok::<_, ServiceError>(VolumeAttach {
                name: vol.name.clone(),
                file: PathBuf::from(&vol.file_path),
                mount: v.mount.clone(),
                read_only: v.read_only,
            })
        }
        .await;
        match r {
            Ok(a) => out.push(a),
            Err(e) => {
                let sid = sandbox_id.to_string();
                let _ = st.db(move |s| s.detach_all(&sid)).await;
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// The caller's sandboxes carrying every label in `labels`
/// (`key=value` each).
pub async fn list(st: &Shared, user: &User, labels: &[String]) -> ServiceResult<Vec<Sandbox>> {
    let filter = validate::label_filter(labels)?;
    let uid = user.id.clone();
    st.db(move |s| s.list_sandboxes(&uid, &filter)).await
}

/// Changes what a patch names: egress, name, labels, keep-hot, in that
/// order, and says so in one event.
pub async fn patch(
    st: &Shared,
    user: &User,
    id: &str,
    req: &api::PatchSandbox,
) -> ServiceResult<Sandbox> {
    let mut sb = st.sandbox(user, id).await?;
    if let Some(n) = &req.name {
        validate::name("sandbox", n)?;
    }
    validate::labels(&req.labels_add)?;
    for k in &req.labels_remove {
        validate::label_key(k)?;
    }
    // Egress first: it is the change the engine may refuse, and then
    // nothing else should have happened.
    if let Some(policy) = egress(req.egress.as_ref())? {
        if st.engine.vm_state(&sb.id).is_none() {
            return Err(ServiceError::conflict(format!(
                "sandbox {:?} is {}: its egress cannot be changed",
                sb.name, sb.status
            )));
        }
        st.engine.set_egress(&sb.id, policy).await?;
        // The engine state carries the policy: persisted with it, it
        // survives a daemon restart.
        sb = st.persist(&sb.id).await?;
    }
    if let Some(n) = req.name.clone().filter(|n| *n != sb.name) {
        let sid = sb.id.clone();
        sb = st.db(move |s| s.rename_sandbox(&sid, &n)).await?;
    }
    if !req.labels_add.is_empty() || !req.labels_remove.is_empty() {
        let (sid, add, rm) = (
            sb.id.clone(),
            req.labels_add.clone(),
            req.labels_remove.clone(),
        );
        sb = st.db(move |s| s.update_labels(&sid, &add, &rm)).await?;
    }
    if let Some(k) = req.keep_hot {
        let sid = sb.id.clone();
        sb = st.db(move |s| s.set_keep_hot(&sid, k)).await?;
        if k {
            st.ensure_hot(&sb).await?;
            let sid = sb.id.clone();
            sb = st.db(move |s| s.sandbox_by_id(&sid)).await?;
        }
    }
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.updated",
        serde_json::to_value(req).unwrap_or_default(),
    );
    Ok(sb)
}

/// Destroys a sandbox: the row first, then the engine's resources.
pub async fn destroy(st: &Shared, user: &User, id: &str) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    destroy_row(st, sb).await
}

/// [`destroy`] for a sandbox already looked up (the expiry reaper's path).
pub async fn destroy_row(st: &Shared, sb: Sandbox) -> ServiceResult<Sandbox> {
    // The row goes first: a request on this sandbox that fails while the
    // engine tears it down then finds it gone (404, not 500), and a daemon
    // that dies in between leaves an orphan that recovery sweeps.
    let sid = sb.id.clone();
    match st.db(move |s| s.delete_sandbox(&sid)).await {
        Ok(_)
        | Err(ServiceError {
            code: ErrorCode::NotFound,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let engine_failed = match st.engine.destroy(&sb.id).await {
        Ok(()) => false,
        Err(e) => {
            // The row is gone regardless: a sandbox the engine no longer
            // knows (`unknown` after recovery) must still be removable.
            tracing::warn!(sandbox = sb.id, error = %e, "engine destroy failed");
            true
        }
    };
    if engine_failed && st.is_creating(&sb.id) {
        // Its create is still making it: that create sees the row gone
        // when it finishes and removes what it made.
        tracing::info!(
            sandbox = sb.id,
            "destroyed while being created; the create removes its resources"
        );
    } else if engine_failed {
        // Its host leftovers (a stray VMM, the netns, the directory) go
        // now rather than at the next restart; every other row is kept.
        if let Ok(rows) = st.db(|s| s.list_all_sandboxes()).await {
            let keep: Vec<String> = rows.into_iter().map(|r| r.id).collect();
            match st.engine.cleanup_orphans(&keep).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(
                        sandbox = sb.id,
                        ?removed,
                        "removed the leftovers of a destroyed sandbox"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(sandbox = sb.id, error = %e, "leftover clean-up failed"),
            }
        }
    }
    st.forget(&sb.id);
    let lifetime = bhatti_store::time::parse_ts(&sb.created_at)
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "sandbox.destroyed",
        serde_json::json!({"lifetime_s": lifetime}),
    );
    Ok(sb)
}

/// Stops a sandbox to disk (its memory with it, so a start resumes its
/// processes).
pub async fn stop(st: &Shared, user: &User, id: &str, reason: &str) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    if st.engine.vm_state(&sb.id).is_none() {
        return Err(ServiceError::conflict(format!(
            "sandbox {:?} is {}: {}",
            sb.name, sb.status, sb.status_reason
        )));
    }
    st.engine.stop(&sb.id).await?;
    let sb = st.persist(&sb.id).await?;
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.stopped",
        serde_json::json!({"reason": reason}),
    );
    Ok(sb)
}

/// Starts (restores) a stopped sandbox.
pub async fn start(st: &Shared, user: &User, id: &str, force: bool) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    if st.engine.vm_state(&sb.id).is_none() {
        return Err(ServiceError::conflict(format!(
            "sandbox {:?} cannot be started: {}",
            sb.name,
            if sb.status_reason.is_empty() {
                "its state is unknown"
            } else {
                &sb.status_reason
            }
        )));
    }
    let r = st.engine.start(&sb.id, force).await;
    // Persist either way: a failed restore trips the breaker, and the
    // store must say so.
    let saved = st.persist(&sb.id).await;
    r?;
    let sb = saved?;
    st.touch(&sb.id);
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.started",
        serde_json::json!({"force": force}),
    );
    Ok(sb)
}

/// Console bytes a request gets when it names no size, and at most.
pub const CONSOLE_DEFAULT_BYTES: u64 = 64 << 10;
pub const CONSOLE_MAX_BYTES: u64 = 1 << 20;

/// The tail of the sandbox's console (boot log, kernel messages, lohar's
/// own log). Read in any state and never wakes the sandbox: it is what
/// one looks at when a sandbox will not come up.
pub async fn console(
    st: &Shared,
    user: &User,
    id: &str,
    bytes: Option<i64>,
) -> ServiceResult<String> {
    let bytes = match bytes {
        None => CONSOLE_DEFAULT_BYTES,
        Some(b) if (1..=i64::try_from(CONSOLE_MAX_BYTES).unwrap_or(i64::MAX)).contains(&b) => {
            b.unsigned_abs()
        }
        Some(b) => {
            return Err(ServiceError::bad_request(format!(
                "bytes must be between 1 and {CONSOLE_MAX_BYTES}, got {b}"
            )))
        }
    };
    let sb = st.sandbox(user, id).await?;
    let n = usize::try_from(bytes).unwrap_or(usize::MAX);
    Ok(st.engine.console(&sb.id, n).await?)
}
