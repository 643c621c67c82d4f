//! The query string of every route, checked in one place: a parameter the route does not
//! take is refused with a JSON 400 rather than ignored. Ignoring one is how
//! `POST /admin/recover/{id}?dry_run=true` once really requeued a live job.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The query parameters of a route, as `T`. Give `T` `#[serde(deny_unknown_fields)]`;
/// [`NoParams`] is the `T` of routes that take none.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Params<T>(pub T);

/// The parameters of a route that takes none: any query parameter is refused.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoParams {}

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}
