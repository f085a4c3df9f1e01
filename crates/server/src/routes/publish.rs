//! Publish rules over [`crate::service::publish`]: publish a port at a
//! public alias, list them, unpublish one.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_store::PublishRule;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::publish as service;
use crate::state::Shared;

fn to_api(st: &Shared, r: &PublishRule) -> api::PublishRule {
    api::PublishRule {
        id: r.id.clone(),
        sandbox_id: r.sandbox_id.clone(),
        port: r.port,
        alias: r.alias.clone(),
        url: service::url(st, &r.alias),
        created_at: r.created_at.clone(),
    }
}

pub async fn publish(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::Publish>,
) -> ServiceResult<Response> {
    let (rule, existed) = service::publish(&st, &user, &id, &req).await?;
    let body = Json(to_api(&st, &rule));
    if existed {
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert(api::EXISTING_HEADER, HeaderValue::from_static("true"));
        Ok(r)
    } else {
        Ok((StatusCode::CREATED, body).into_response())
    }
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<Vec<api::PublishRule>>> {
    let rules = service::list(&st, &user, &id).await?;
    Ok(Json(rules.iter().map(|r| to_api(&st, r)).collect()))
}

pub async fn unpublish(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path((id, port)): Path<(String, String)>,
) -> ServiceResult<StatusCode> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ServiceError::bad_request("port must be 1-65535"))?;
    service::unpublish(&st, &user, &id, port).await?;
    Ok(StatusCode::NO_CONTENT)
}
