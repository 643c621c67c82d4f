//! Bearer keys, as the admin and write routes check them.

use axum::http::{HeaderMap, header};

/// Whether `headers` carry `Authorization: Bearer <key>` (the scheme in any case, blanks
/// around the key ignored).
pub(super) fn has_bearer_key(headers: &HeaderMap, key: &[u8]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .is_some_and(|(_, token)| constant_time_eq(token.trim_ascii(), key))
}

/// Equality whose time depends only on the length of `given`, not on where it differs from
/// `expected`, so a caller cannot find the key byte by byte by timing answers.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in given.iter().enumerate() {
        let other = expected.get(index).copied().unwrap_or(!*byte);
        difference |= byte ^ other;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3crett", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"x", b""));
    }

    #[test]
    fn a_bearer_key_is_found_in_any_case_of_the_scheme_only() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            has_bearer_key(&headers, b"s3cret")
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer  s3cret "));
        assert!(with("BEARER s3cret"));
        assert!(!with("Basic s3cret"));
        assert!(!with("Bearer\ts3cret"));
        assert!(!with("Bearers3cret"));
        assert!(!with(" Bearer s3cret"));
        assert!(!with("Bearer s3cre"));
        assert!(!has_bearer_key(&HeaderMap::new(), b"s3cret"));
    }
}
