//! The TCP ports listening in sandboxes, as the proxy can reach them: one
//! sandbox's (woken to ask), or those of every sandbox of the caller's that
//! is hot already (asking never wakes one, so a listing costs no resumes).

use bhatti_engine::contract::Thermal;
use bhatti_engine::EngineExt;
use bhatti_store::{SandboxStatus, User};

use crate::service::error::ServiceResult;
use crate::state::Shared;

/// The agent's own listeners (control and forward): not the user's to
/// proxy to.
fn users(ports: Vec<u16>) -> impl Iterator<Item = u16> {
    ports.into_iter().filter(|p| *p != 1024 && *p != 1025)
}

/// The ports listening in the caller's sandbox `id`.
pub async fn of_sandbox(st: &Shared, user: &User, id: &str) -> ServiceResult<Vec<u16>> {
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    let ports = st.engine.listening_ports(&sb.id).await?;
    Ok(users(ports).collect())
}

/// `(sandbox id, port)` for every hot sandbox of the caller's; a sandbox
/// whose agent does not answer is left out rather than failing the list.
pub async fn of_hot_sandboxes(st: &Shared, user: &User) -> ServiceResult<Vec<(String, u16)>> {
    let uid = user.id.clone();
    let rows = st
        .db(move |s| s.list_sandboxes(&uid, &Default::default()))
        .await?;
    let mut out = Vec::new();
    for sb in rows.iter().filter(|s| s.status == SandboxStatus::Running) {
        if !matches!(st.engine.thermal(&sb.id), Ok(Thermal::Hot)) {
            continue;
        }
        if let Ok(ports) = st.engine.listening_ports(&sb.id).await {
            out.extend(users(ports).map(|p| (sb.id.clone(), p)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_ports_are_hidden() {
        let v: Vec<u16> = users(vec![22, 1024, 1025, 8080]).collect();
        assert_eq!(v, vec![22, 8080]);
    }
}
