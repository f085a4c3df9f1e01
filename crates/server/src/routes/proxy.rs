//! Listening ports and the authenticated reverse proxy
//! `/sandboxes/:id/proxy/:port/…`: the caller's sandbox is woken and the
//! request goes through [`crate::proxy`].

use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::Json;
use bhatti_api as api;

use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::ports;
use crate::state::Shared;

pub async fn ports(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<Vec<api::Port>>> {
    let ports = ports::of_sandbox(&st, &user, &id).await?;
    Ok(Json(
        ports
            .into_iter()
            .map(|p| api::Port {
                sandbox_id: None,
                container_port: p,
                proxy_url: format!("/sandboxes/{id}/proxy/{p}/"),
            })
            .collect(),
    ))
}

/// Ports of every hot sandbox of the user; wakes nothing.
pub async fn all_ports(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Port>>> {
    let ports = ports::of_hot_sandboxes(&st, &user).await?;
    Ok(Json(
        ports
            .into_iter()
            .map(|(sid, p)| api::Port {
                proxy_url: format!("/sandboxes/{sid}/proxy/{p}/"),
                sandbox_id: Some(sid),
                container_port: p,
            })
            .collect(),
    ))
}

/// The raw (still percent-encoded) path after `/sandboxes/<id>/proxy/<port>`,
/// found by position: the ID and port were decoded once by the router, and
/// searching for their decoded text in the raw path would miss an encoded
/// ID and forward the wrong path.
fn rest_after_port(raw: &str) -> &str {
    let rest = raw.match_indices('/').nth(4).map_or("", |(i, _)| &raw[i..]);
    if rest.is_empty() {
        "/"
    } else {
        rest
    }
}

pub async fn proxy(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> ServiceResult<Response> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let id = get("id").unwrap_or_default();
    let port: u16 = get("port")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ServiceError::bad_request("port must be 1-65535"))?;
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    // Path after `/proxy/<port>`, and the query, forwarded verbatim.
    let rest = rest_after_port(req.uri().path());
    let pq = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    crate::proxy::forward(&st, &sb.id, port, req, &pq, "http").await
}

#[cfg(test)]
mod tests {
    use super::rest_after_port;

    #[test]
    fn the_forwarded_path_is_found_by_position() {
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80"), "/");
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80/"), "/");
        assert_eq!(rest_after_port("/sandboxes/abc/proxy/80/a/b"), "/a/b");
        // A percent-encoded ID (and port) still forwards the right path,
        // which stays encoded as the client sent it.
        assert_eq!(
            rest_after_port("/sandboxes/%61bc/proxy/%380/x%20y"),
            "/x%20y"
        );
        assert_eq!(rest_after_port("/sandboxes/my%2Fbox/proxy/80/p"), "/p");
    }
}
