//! The web shell: a browser terminal on a sandbox for whoever holds its
//! token (`bhatti share`), with no API key.
//!
//! One token per sandbox at a time; only its SHA-256 is stored, with an
//! expiry. Minting a new token or revoking it ends every live web-shell
//! session of that sandbox at once. At most [`MAX_SESSIONS`] run per
//! sandbox, and token attempts are limited per client address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use bhatti_store::{Sandbox, User};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};
use crate::state::{lock, Shared};

/// Live web-shell sessions one sandbox may have.
pub const MAX_SESSIONS: usize = 5;
/// How long a token works (the owner can revoke it sooner, or mint a new
/// one).
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The live sessions of each sandbox: how many, and the signal that ends
/// them all.
#[derive(Default)]
pub struct Sessions {
    by_sandbox: Mutex<HashMap<String, Live>>,
}

struct Live {
    count: usize,
    revoked: CancellationToken,
}

/// One live web-shell session; ends its count when dropped.
pub struct Session {
    sessions: Shared,
    sandbox_id: String,
    /// Cancelled when the token is revoked or replaced.
    pub revoked: CancellationToken,
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut m = lock(&self.sessions.web_shells.by_sandbox);
        if let Some(l) = m.get_mut(&self.sandbox_id) {
            l.count = l.count.saturating_sub(1);
            if l.count == 0 {
                m.remove(&self.sandbox_id);
            }
        }
    }
}

impl Sessions {
    /// Ends every live session of `sandbox_id`.
    fn revoke(&self, sandbox_id: &str) {
        if let Some(l) = lock(&self.by_sandbox).remove(sandbox_id) {
            l.revoked.cancel();
        }
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Mints the sandbox's token (replacing any other, whose sessions end);
/// returns it. Only its hash is kept.
pub async fn mint(st: &Shared, user: &User, id: &str) -> ServiceResult<(Sandbox, String)> {
    let sb = st.sandbox(user, id).await?;
    let token = bhatti_store::ids::random_hex(32);
    let h = hash(&token);
    let expires = bhatti_store::time::format_ts(
        SystemTime::now()
            .checked_add(TOKEN_TTL)
            .unwrap_or_else(SystemTime::now),
    );
    let sid = sb.id.clone();
    let sb = st
        .db(move |s| s.set_shell_token_hash(&sid, Some((&h, &expires))))
        .await?;
    st.web_shells.revoke(&sb.id);
    Ok((sb, token))
}

/// Revokes the sandbox's token and ends its live sessions.
pub async fn revoke(st: &Shared, user: &User, id: &str) -> ServiceResult<()> {
    let sb = st.sandbox(user, id).await?;
    let sid = sb.id.clone();
    st.db(move |s| s.set_shell_token_hash(&sid, None)).await?;
    st.web_shells.revoke(&sb.id);
    Ok(())
}

/// The refusal for every token that does not open `sandbox_id`, whatever
/// the reason (no such sandbox, no token, a wrong or expired one): a
/// holder learns nothing about which.
fn refused() -> ServiceError {
    ServiceError::unauthorized("invalid or expired shell token")
}

/// Checks `token` for the sandbox `sandbox_id` from `source`, and opens a
/// session slot: 429 past the attempt limit, 401 for a bad token, 409 at
/// [`MAX_SESSIONS`].
pub async fn open(
    st: &Shared,
    sandbox_id: &str,
    token: &str,
    source: &str,
) -> ServiceResult<(Sandbox, Session)> {
    if !st.web_shell_attempts.take(source) {
        return Err(
            ServiceError::too_many("too many web-shell attempts; retry later")
                .because(ErrorReason::RateLimited),
        );
    }
    let id = sandbox_id.to_string();
    let sb = match st.db(move |s| s.sandbox_by_id(&id)).await {
        Ok(sb) => sb,
        Err(e) if e.is(ErrorCode::NotFound) => return Err(refused()),
        Err(e) => return Err(e),
    };
    let valid = sb.shell_token_hash.as_deref() == Some(hash(token).as_str())
        && sb
            .shell_token_expires_at
            .as_deref()
            .and_then(bhatti_store::time::parse_ts)
            .is_some_and(|t| t > SystemTime::now());
    if !valid {
        return Err(refused());
    }
    let mut m = lock(&st.web_shells.by_sandbox);
    let live = m.entry(sb.id.clone()).or_insert_with(|| Live {
        count: 0,
        revoked: CancellationToken::new(),
    });
    if live.count >= MAX_SESSIONS {
        return Err(ServiceError::conflict(format!(
            "too many sessions: at most {MAX_SESSIONS} web shells per sandbox"
        )));
    }
    live.count = live.count.saturating_add(1);
    let revoked = live.revoked.clone();
    drop(m);
    let session = Session {
        sessions: st.clone(),
        sandbox_id: sb.id.clone(),
        revoked,
    };
    Ok((sb, session))
}

/// Where a browser opens the page: the public listener when there is one
/// (the API host in domain mode), else the API's own address.
pub fn url(st: &Shared, sandbox_id: &str, token: &str) -> String {
    let base = match (st.public_addr(), &st.cfg.domain) {
        (Some(p), Some(d)) if d.api_host.is_some() => {
            d.origin(d.api_host.as_deref().unwrap_or_default(), p.port())
        }
        (Some(p), _) => format!("http://{}", crate::service::publish::host_port(p)),
        (None, _) => match st.api_addr() {
            Some(a) => format!("http://{}", crate::service::publish::host_port(a)),
            None => String::new(),
        },
    };
    format!("{base}/_shell/{sandbox_id}#token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_as_their_hash() {
        let h = hash("abc");
        assert_eq!(h.len(), 64);
        assert_ne!(h, "abc");
        assert_eq!(h, hash("abc"));
    }
}
