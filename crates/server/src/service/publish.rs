//! Publish rules: one port of one sandbox at a public alias, served by the
//! public listener ([`crate::public`]) with no key.
//!
//! The public listener resolves an alias on every request, so the routes
//! are cached here ([`RouteCache`]); every change to a rule (publish,
//! unpublish, destroy) goes through this module, which invalidates the
//! entry in the same step.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bhatti_api as api;
use bhatti_store::{PublishRule, Sandbox, User};

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::{lock, Shared};
use crate::validate;

/// Aliases kept in the route cache; past it, the cache starts over (a
/// miss costs one indexed SQLite read).
const ROUTE_CACHE_MAX: usize = 10_000;
/// Tries at a free automatic alias before giving up (each adds 24 random
/// bits, so a second try is already rare).
const AUTO_ALIAS_TRIES: usize = 4;

/// Where a published alias leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The sandbox.
    pub sandbox_id: String,
    /// The guest port.
    pub port: u16,
}

/// Alias → route, for the public listener.
#[derive(Default)]
pub struct RouteCache {
    routes: Mutex<HashMap<String, Route>>,
}

impl RouteCache {
    fn get(&self, alias: &str) -> Option<Route> {
        lock(&self.routes).get(alias).cloned()
    }
    fn put(&self, alias: &str, r: Route) {
        let mut m = lock(&self.routes);
        if m.len() >= ROUTE_CACHE_MAX {
            m.clear();
        }
        m.insert(alias.to_string(), r);
    }
    /// Drops an alias (its rule changed or its sandbox is gone).
    pub fn forget(&self, alias: &str) {
        lock(&self.routes).remove(alias);
    }
}

/// The public URL of `alias`, as the daemon is configured to serve it.
pub fn url(st: &Shared, alias: &str) -> String {
    let Some(public) = st.public_addr() else {
        return format!("(no public proxy configured) alias: {alias}");
    };
    match &st.cfg.domain {
        Some(d) => d.origin(&format!("{alias}.{}", d.proxy_zone), public.port()),
        None => format!("http://{}/{alias}/", host_port(public)),
    }
}

/// `host:port` for a URL: an unspecified address (listening everywhere)
/// is named by the host's name, which is what a client elsewhere can use.
pub(crate) fn host_port(a: std::net::SocketAddr) -> String {
    if a.ip().is_unspecified() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", a.port())
    } else {
        a.to_string()
    }
}

/// `<name, lower-cased, other characters as '-'>-<6 hex>`, within 63.
fn auto_alias(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(56)
        .collect();
    let base = base.trim_start_matches('-');
    let base = if base.is_empty() { "sb" } else { base };
    format!("{base}-{}", bhatti_store::ids::random_hex(3))
}

/// Publishes `port` of the caller's sandbox `id`. Returns the rule and
/// whether it existed already (the same port published before: that rule
/// is the answer, whatever alias was asked for).
pub async fn publish(
    st: &Shared,
    user: &User,
    id: &str,
    req: &api::Publish,
) -> ServiceResult<(PublishRule, bool)> {
    if req.port == 0 {
        return Err(ServiceError::bad_request("port must be 1-65535"));
    }
    if let Some(a) = &req.alias {
        validate::alias(a)?;
    }
    let sb = st.sandbox(user, id).await?;
    let (sid, port) = (sb.id.clone(), req.port);
    match st.db(move |s| s.publish_rule(&sid, port)).await {
        Ok(r) => return Ok((r, true)),
        Err(e) if e.is(ErrorCode::NotFound) => {}
        Err(e) => return Err(e),
    }
    let tries = if req.alias.is_some() {
        1
    } else {
        AUTO_ALIAS_TRIES
    };
    let mut last = None;
    for _ in 0..tries {
        let alias = req.alias.clone().unwrap_or_else(|| auto_alias(&sb.name));
        let (sid, uid) = (sb.id.clone(), sb.user_id.clone());
        match st
            .db(move |s| s.create_publish_rule(&sid, &uid, port, &alias))
            .await
        {
            Ok(r) => {
                st.routes.forget(&r.alias);
                st.events.emit(
                    &sb.user_id,
                    &sb.id,
                    "publish.created",
                    serde_json::json!({"port": r.port, "alias": r.alias}),
                );
                return Ok((r, false));
            }
            Err(e) if e.is(ErrorCode::Conflict) => {
                // A concurrent publish of the same port won: its rule is
                // the answer. Otherwise the alias is someone else's.
                let sid = sb.id.clone();
                if let Ok(r) = st.db(move |s| s.publish_rule(&sid, port)).await {
                    return Ok((r, true));
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ServiceError::conflict("alias is already taken")))
}

/// The caller's sandbox's rules, by port.
pub async fn list(st: &Shared, user: &User, id: &str) -> ServiceResult<Vec<PublishRule>> {
    let sb = st.sandbox(user, id).await?;
    st.db(move |s| s.list_publish_rules(&sb.id)).await
}

/// Unpublishes one port; 404 when it was not published.
pub async fn unpublish(st: &Shared, user: &User, id: &str, port: u16) -> ServiceResult<()> {
    let sb = st.sandbox(user, id).await?;
    let sid = sb.id.clone();
    let r = st
        .db(move |s| s.delete_publish_rule(&sid, port))
        .await
        .map_err(|e| e.or_not_found(|| format!("port {port} is not published")))?;
    st.routes.forget(&r.alias);
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "publish.deleted",
        serde_json::json!({"port": r.port, "alias": r.alias}),
    );
    Ok(())
}

/// Forgets the routes of rules that went with their sandbox.
pub fn forget_all(st: &Shared, rules: &[PublishRule]) {
    for r in rules {
        st.routes.forget(&r.alias);
    }
}

/// The public URLs of each of the caller's sandboxes that has any.
pub async fn urls(st: &Shared, user: &User) -> ServiceResult<BTreeMap<String, Vec<String>>> {
    let uid = user.id.clone();
    let rules = st.db(move |s| s.list_user_publish_rules(&uid)).await?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rules {
        out.entry(r.sandbox_id.clone())
            .or_default()
            .push(url(st, &r.alias));
    }
    Ok(out)
}

/// The public URLs of one sandbox.
pub async fn urls_of(st: &Shared, sb: &Sandbox) -> ServiceResult<Vec<String>> {
    let sid = sb.id.clone();
    let rules = st.db(move |s| s.list_publish_rules(&sid)).await?;
    Ok(rules.iter().map(|r| url(st, &r.alias)).collect())
}

/// Where `alias` leads: the cache, else the store; 404 when nothing is
/// published under it.
pub async fn route(st: &Shared, alias: &str) -> ServiceResult<Route> {
    if let Some(r) = st.routes.get(alias) {
        return Ok(r);
    }
    let a = alias.to_string();
    let rule = st
        .db(move |s| s.publish_rule_by_alias(&a))
        .await
        .map_err(|e| e.or_not_found(|| format!("nothing is published as {alias:?}")))?;
    let r = Route {
        sandbox_id: rule.sandbox_id,
        port: rule.port,
    };
    st.routes.put(alias, r.clone());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_aliases_are_valid_labels() {
        for name in ["web", "My_App.v2", "---", &"x".repeat(63)] {
            let a = auto_alias(name);
            assert!(validate::alias(&a).is_ok(), "{name} → {a}");
        }
        assert!(auto_alias("My_App").starts_with("my-app-"));
        assert!(auto_alias("---").starts_with("sb-"));
    }

    #[test]
    fn the_cache_forgets_and_stays_bounded() {
        let c = RouteCache::default();
        let r = Route {
            sandbox_id: "s".into(),
            port: 80,
        };
        c.put("a", r.clone());
        assert_eq!(c.get("a"), Some(r.clone()));
        c.forget("a");
        assert_eq!(c.get("a"), None);
        for i in 0..=ROUTE_CACHE_MAX {
            c.put(&format!("a{i}"), r.clone());
        }
        assert!(lock(&c.routes).len() <= ROUTE_CACHE_MAX);
    }
}
