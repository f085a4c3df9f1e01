//! Create: the request checked and merged with its template, the store row
//! written first (quota and name decided there), volumes attached, the image
//! resolved, then the engine. All or nothing, also when the caller goes away.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use bhatti_api as api;
use bhatti_engine::contract::{GuestFile, ResumeSpec, SandboxSpec, VolumeAttach};
use bhatti_engine::net::EgressPolicy;
use bhatti_store::{NewSandbox, Sandbox, SandboxStatus, User};

use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};
use crate::service::volumes;
use crate::state::Shared;
use crate::validate;

use super::destroy_row;
use super::lifetime::{expiry_action, expiry_from_now};

/// What [`create`] made, or the live sandbox of that name it found instead
/// (create is idempotent by name).
#[derive(Debug)]
pub struct Created {
    pub sandbox: Sandbox,
    pub existing: bool,
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

    let mut spec = SandboxSpec {
        id: None,
        name: name.clone(),
        owner_index: user.subnet_index,
        image: image.path.clone(),
        cpus,
        memory_mb,
        disk_size_mb,
        env,
        files,
        init: req.init.clone().unwrap_or_default(),
        volumes: Vec::new(),
        egress: egress.clone().unwrap_or_default(),
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
    // A plain create (no fork, no volumes) may take a warm-pool sandbox:
    // reserved now, because the row below carries its ID.
    let pooled = (source.is_none() && req.persistent_volumes.is_empty())
        .then(|| st.engine.reserve_pooled(&spec))
        .flatten();
    let id = pooled.clone().unwrap_or_else(bhatti_store::ids::sandbox_id);
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
        Err(e) if e.reason == Some(ErrorReason::AlreadyExists) => {
            if pooled.is_some() {
                // Taken for nothing: it goes (a pooled sandbox is used once).
                let _ = st.engine.destroy(&id).await;
            }
            let (uid, n) = (user.id.clone(), name.clone());
            let winner = st.db(move |s| s.sandbox(&uid, &n)).await?;
            return Ok(Created {
                sandbox: winner,
                existing: true,
            });
        }
        Err(e) => {
            if pooled.is_some() {
                let _ = st.engine.destroy(&id).await;
            }
            return Err(e);
        }
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
        spec.id = Some(id.clone());
        spec.volumes = attach_volumes(st, user, &id, &req.persistent_volumes).await?;
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
            crate::dns::open_for(st, &id);
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
pub async fn default_image(st: &Shared) -> String {
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
