//! Entity tags that name one write of a record, and the conditional headers that use them.
//!
//! The tag is `"<created_at millis>.<version>"`: the version alone could name two different
//! writes once a record is deleted and made again, the incarnation's creation time cannot.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::record::Record;

/// The entity tag of `record`, quotes included.
pub(super) fn etag_of(record: &Record) -> String {
    format!("\"{}.{}\"", record.created_at.as_millis(), record.version)
}

/// What an `If-Match` or `If-None-Match` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Condition {
    /// `*`: any current record.
    Any,
    /// A list of entity tags, each with its quotes, and whether it was weak (`W/`).
    Tags(Vec<(bool, String)>),
}

impl Condition {
    /// Whether `record` passes with the strong comparison `If-Match` requires (RFC 9110
    /// 13.1.1): a weak tag never matches.
    pub(super) fn strongly_matches(&self, record: Option<&Record>) -> bool {
        match (self, record) {
            (_, None) => false,
            (Condition::Any, Some(_)) => true,
            (Condition::Tags(tags), Some(record)) => {
                let current = etag_of(record);
                tags.iter().any(|(weak, tag)| !weak && *tag == current)
            }
        }
    }

    /// Whether the record tagged `current` ([`etag_of`]) matches with the weak comparison
    /// `If-None-Match` uses.
    pub(super) fn weakly_matches(&self, current: &str) -> bool {
        match self {
            Condition::Any => true,
            Condition::Tags(tags) => tags.iter().any(|(_, tag)| tag == current),
        }
    }
}

/// Parses the condition header `name`; `None` when absent. Every value of the header counts,
/// as if joined by commas.
pub(super) fn condition(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<Condition>, ApiError> {
    let mut tags = Vec::new();
    let mut any = false;
    let mut present = false;
    for value in headers.get_all(&name) {
        present = true;
        let text = value.to_str().map_err(|_| {
            ApiError::bad_request(format!("the {name} header is not visible ASCII"))
        })?;
        for item in text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item == "*" {
                any = true;
                continue;
            }
            let (weak, tag) = match item.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, item),
            };
            let quoted = tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"');
            if !quoted || tag[1..tag.len() - 1].contains('"') {
                return Err(ApiError::bad_request(format!(
                    "the {name} header has `{item}`, not an entity tag (a quoted string such as \"1764624000000.3\") or *"
                )));
            }
            tags.push((weak, tag.to_string()));
        }
    }
    Ok(match (present, any) {
        (false, _) => None,
        (true, true) => Some(Condition::Any),
        (true, false) => Some(Condition::Tags(tags)),
    })
}

/// The `If-None-Match` of a request, parsed where it lies: the handler needs no copy of the
/// request's headers. A malformed header is kept as its error, for the handler to report
/// only once the record is found (a missing record is a 404 whatever the header says).
#[derive(Debug)]
pub(super) struct IfNoneMatch(Result<Option<Condition>, ApiError>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(condition(
            &parts.headers,
            header::IF_NONE_MATCH,
        )))
    }
}

/// The answer to a read of `record`: 304 without a body when the client's `If-None-Match`
/// names the current write, else the record as JSON. Both carry the `ETag`.
pub(super) fn conditional_read(
    if_none_match: IfNoneMatch,
    record: Record,
) -> Result<Response, ApiError> {
    // Made once, compared with the client's tags, then moved into the header.
    let etag = etag_of(&record);
    let unchanged = if_none_match
        .0?
        .is_some_and(|condition| condition.weakly_matches(&etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(record).into_response()
    };
    response.headers_mut().insert(header::ETAG, tag_value(etag));
    // The answer depends on these request headers; a shared cache must not mix them up.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The `ETag` header value of `record`.
pub(super) fn header_value(record: &Record) -> HeaderValue {
    tag_value(etag_of(record))
}

/// `tag` ([`etag_of`]) as a header value, without a copy.
fn tag_value(tag: String) -> HeaderValue {
    // Digits, a dot and quotes only: always a valid header value.
    HeaderValue::try_from(tag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Timestamp;
    use serde_json::json;

    fn record(created: u64, version: u64) -> Record {
        Record {
            id: "job-1".into(),
            version,
            created_at: Timestamp::from_millis(created),
            updated_at: Timestamp::from_millis(created),
            expires_at: None,
            status: json!({}),
        }
    }

    fn parse(value: &str) -> Result<Option<Condition>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
        condition(&headers, header::IF_MATCH)
    }

    #[test]
    fn a_tag_names_the_incarnation_and_the_version() {
        assert_eq!(etag_of(&record(1000, 3)), "\"1000.3\"");
        let condition = parse("\"1000.3\"").unwrap().unwrap();
        assert!(condition.strongly_matches(Some(&record(1000, 3))));
        assert!(!condition.strongly_matches(Some(&record(1000, 4))));
        // The same version of a record made again is another write.
        assert!(!condition.strongly_matches(Some(&record(2000, 3))));
        assert!(!condition.strongly_matches(None));
    }

    #[test]
    fn lists_stars_and_weak_tags_follow_rfc_9110() {
        let list = parse("\"1.1\", W/\"1000.3\" ,\"1000.4\"").unwrap().unwrap();
        assert!(list.strongly_matches(Some(&record(1000, 4))));
        assert!(
            !list.strongly_matches(Some(&record(1000, 3))),
            "weak never matches strongly"
        );
        assert!(list.weakly_matches(&etag_of(&record(1000, 3))));
        assert!(!list.weakly_matches(&etag_of(&record(1000, 5))));
        let any = parse("*").unwrap().unwrap();
        assert!(any.strongly_matches(Some(&record(1, 1))));
        assert!(!any.strongly_matches(None));
        assert!(parse("1000.3").is_err(), "unquoted");
        assert!(parse("\"a\"b\"").is_err());
        assert_eq!(
            condition(&HeaderMap::new(), header::IF_MATCH).unwrap(),
            None
        );
    }
}
