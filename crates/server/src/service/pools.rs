//! Warm pools: the config's `pools` (or an operator's `PUT /admin/pools`)
//! resolved from image names to files for the engine, and the operator's
//! view of them. The engine does the pooling (docs/engine.md, "Warm
//! pools"); this layer only names things and checks who asks.

use std::path::PathBuf;

use bhatti_api as api;
use bhatti_engine::contract::{PoolSpec, PoolStatus};
use bhatti_store::User;

use crate::config::{check_pools, DEFAULT_POOL_SIZE};
use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::service::sandboxes::default_image;
use crate::state::Shared;

/// The pools the config asks for (unset: the default pool).
fn configured(st: &Shared) -> Vec<api::PoolConfig> {
    st.cfg.pools.clone().unwrap_or_else(|| {
        vec![api::PoolConfig {
            image: None,
            cpus: None,
            memory_mb: None,
            size: DEFAULT_POOL_SIZE,
        }]
    })
}

/// One pool's image name and file (`None`: the engine's default image).
async fn image_file(st: &Shared, image: Option<&str>) -> ServiceResult<(String, Option<PathBuf>)> {
    let name = match image.filter(|i| !i.is_empty()) {
        Some(i) => i.to_string(),
        None => default_image(st).await,
    };
    if name == "minimal" {
        return Ok((name, None));
    }
    let n = name.clone();
    match st
        .db(move |s| s.image_exact(bhatti_store::ADMIN_USER, &n))
        .await
    {
        Ok(img) => Ok((name, Some(PathBuf::from(img.file_path)))),
        Err(e) if e.code == ErrorCode::NotFound => Err(ServiceError::not_found(format!(
            "image {name:?} is not an admin image (pools take admin images or `minimal`)"
        ))),
        Err(e) => Err(e),
    }
}

async fn resolve(st: &Shared, pools: &[api::PoolConfig]) -> ServiceResult<Vec<PoolSpec>> {
    check_pools(pools).map_err(ServiceError::bad_request)?;
    let mut out = Vec::new();
    for p in pools {
        let (name, image) = image_file(st, p.image.as_deref()).await?;
        out.push(PoolSpec {
            name,
            image,
            cpus: p.cpus.unwrap_or(1),
            memory_mb: p.memory_mb.unwrap_or(st.cfg.default_memory_mb),
            size: p.size,
        });
    }
    Ok(out)
}

/// At start: the config's pools go to the engine. A pool whose image is
/// unknown is left out, with a warning.
pub async fn start(st: &Shared) {
    let mut specs = Vec::new();
    for p in configured(st) {
        match resolve(st, std::slice::from_ref(&p)).await {
            Ok(s) => specs.extend(s),
            Err(e) => tracing::warn!(image = ?p.image, "warm pool left out: {}", e.message),
        }
    }
    if specs.iter().any(|p| p.size > 0) {
        tracing::info!(pools = specs.len(), "warm pools configured");
    }
    st.engine.set_pools(specs);
}

fn require_admin(st: &Shared, user: &User) -> ServiceResult<()> {
    if st.cfg.admin_users.contains(&user.name) {
        Ok(())
    } else {
        Err(ServiceError::forbidden(
            "warm pools are the operators' (users named in admin_users)",
        ))
    }
}

fn info(s: PoolStatus) -> api::PoolInfo {
    api::PoolInfo {
        image: s.spec.name,
        cpus: s.spec.cpus,
        memory_mb: s.spec.memory_mb,
        size: s.spec.size,
        ready: s.ready,
        template: s.template,
        hits: s.hits,
        misses: s.misses,
        refills: s.refills,
        discarded: s.discarded,
        rss_bytes: s.rss_bytes,
    }
}

/// The pools as they stand (also what `/metrics` reports).
pub fn status(st: &Shared) -> api::Pools {
    api::Pools {
        enabled: st.engine_name != "docker" && st.cfg.template_snapshots,
        pools: st.engine.pools().into_iter().map(info).collect(),
    }
}

/// `GET /admin/pools`.
pub fn get(st: &Shared, user: &User) -> ServiceResult<api::Pools> {
    require_admin(st, user)?;
    Ok(status(st))
}

/// `PUT /admin/pools`: replaces every pool until the daemon restarts.
pub async fn set(st: &Shared, user: &User, req: api::SetPools) -> ServiceResult<api::Pools> {
    require_admin(st, user)?;
    let p = status(st);
    if !p.enabled {
        return Err(ServiceError::unsupported(
            "warm pools need a microVM engine with template_snapshots on",
        ));
    }
    let specs = resolve(st, &req.pools).await?;
    st.engine.set_pools(specs);
    Ok(status(st))
}
