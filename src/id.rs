//! Id validation: an allowlist, never a sanitizer.

use crate::error::{Error, Result};

/// The longest id accepted, in bytes. Leaves room for `.json`/`.lock` suffixes and key
/// prefixes within the 255-byte file name limit of common file systems.
pub const MAX_ID_LEN: usize = 128;

const WINDOWS_DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "CONIN$",
    "CONOUT$",
];

/// Checks an id against the allowlist every backend uses.
///
/// Allowed: 1 to [`MAX_ID_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, not starting
/// with `.` or `-`, not ending with `.`, and not a Windows device name (`CON`, `nul.json`, ...).
/// Everything else (`..`, `/`, `\`, absolute paths, NUL, spaces, non-ASCII) is refused, so an
/// id can never name a file outside the store nor a hidden or special file.
pub fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidId {
            id: id.escape_debug().to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return invalid("it is longer than 128 bytes");
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return invalid(match bad {
            '/' | '\\' => "it contains a path separator",
            '\0' => "it contains a NUL byte",
            c if c.is_control() => "it contains a control character",
            c if !c.is_ascii() => "it contains a non-ASCII character",
            _ => "only ASCII letters, digits, '-', '_' and '.' are allowed",
        });
    }
    if id.starts_with('.') {
        return invalid("it starts with a dot");
    }
    if id.starts_with('-') {
        return invalid("it starts with a dash");
    }
    if id.ends_with('.') {
        return invalid("it ends with a dot");
    }
    let stem = id.split('.').next().unwrap_or(id);
    if WINDOWS_DEVICE_NAMES
        .iter()
        .any(|name| name.eq_ignore_ascii_case(stem))
    {
        return invalid("it is a reserved device name on Windows");
    }
    Ok(())
}

/// Checks the name of a store-wide lock ([`SyncStorage::try_lock`](crate::SyncStorage::try_lock)).
///
/// One rule for every backend: a lock name is held to the id allowlist of [`validate_id`]. The
/// file store makes a file of it, and the others keys or advisory-lock hashes, so a name one
/// backend accepts must be one every backend can hold without escaping its namespace.
pub(crate) fn validate_lock_name(name: &str) -> Result<()> {
    validate_id(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in [
            "sync-1732240000",
            "a",
            "job_1.part2",
            "A.B-c_9",
            &"x".repeat(128),
        ] {
            assert!(validate_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_evil_ids() {
        let long = "x".repeat(129);
        for id in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "a\\b",
            "/etc/passwd",
            "C:\\x",
            "a\0b",
            ".hidden",
            "-rf",
            "trailing.",
            "CON",
            "con",
            "nul.json",
            "Lpt1.txt",
            "a b",
            "é",
            "a\nb",
            "x:y",
            &long,
        ] {
            assert!(
                matches!(validate_id(id), Err(Error::InvalidId { .. })),
                "{id:?} was accepted"
            );
        }
    }
}
