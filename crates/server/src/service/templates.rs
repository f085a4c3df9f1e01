//! Per-user templates: a create's defaults under a name, checked as a
//! create would check them so that a template cannot hold what no sandbox
//! could be made with.

use bhatti_api as api;
use bhatti_store::{Template, User};

use crate::service::error::{ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

pub async fn list(st: &Shared, user: &User) -> ServiceResult<Vec<Template>> {
    let uid = user.id.clone();
    st.db(move |s| s.list_templates(&uid)).await
}

/// Template `id_or_name` of the caller's.
pub async fn get(st: &Shared, user: &User, id_or_name: &str) -> ServiceResult<Template> {
    let (uid, id) = (user.id.clone(), id_or_name.to_string());
    st.db(move |s| s.template(&uid, &id)).await
}

pub async fn create(st: &Shared, user: &User, t: api::Template) -> ServiceResult<Template> {
    validate::name("template", &t.name)?;
    validate::labels(&t.labels)?;
    let cpus = validate::cpus(t.cpus, 1)?;
    validate::disk_size_mb(t.disk_size_mb)?;
    validate::env(&t.env)?;
    let memory_mb = match t.memory_mb {
        None => 2048,
        Some(m) if m < 128 => {
            return Err(ServiceError::bad_request("memory_mb must be at least 128"))
        }
        Some(m) => {
            u32::try_from(m).map_err(|_| ServiceError::bad_request("memory_mb is too large"))?
        }
    };
    for v in &t.persistent_volumes {
        validate::name("volume", &v.name)?;
        validate::mount_path(&v.mount)?;
    }
    validate::distinct_mounts(t.persistent_volumes.iter().map(|v| v.mount.as_str()))?;
    crate::service::sandboxes::decode_files(&t.files)?;
    for s in &t.secrets {
        validate::secret_name(s)?;
    }
    let row = Template {
        id: String::new(),
        user_id: user.id.clone(),
        name: t.name,
        image: t.image,
        cpus,
        memory_mb,
        disk_size_mb: t.disk_size_mb,
        env: t.env,
        secrets: t.secrets,
        files: serde_json::to_value(&t.files).map_err(ServiceError::internal)?,
        volumes: serde_json::to_value(&t.persistent_volumes).map_err(ServiceError::internal)?,
        init: t.init,
        labels: t.labels,
        created_at: String::new(),
    };
    st.db(move |s| s.create_template(&row)).await
}

pub async fn delete(st: &Shared, user: &User, id_or_name: &str) -> ServiceResult<()> {
    let (uid, id) = (user.id.clone(), id_or_name.to_string());
    st.db(move |s| s.delete_template(&uid, &id)).await?;
    Ok(())
}
