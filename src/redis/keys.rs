//! The names of a Redis store's keys, and on a cluster the hash tag that keeps them in one slot.

use crate::error::{Error, Result};

/// The names of a store's keys.
#[derive(Debug)]
pub(super) struct Keys {
    /// The prefix the store was given.
    pub(super) prefix: String,
    /// What every key starts with: the prefix, on a cluster within a hash tag.
    pub(super) key_prefix: String,
    pub(super) index: String,
    pub(super) channel: String,
}

impl Keys {
    pub(super) fn new(prefix: String, cluster: bool) -> Result<Self> {
        let key_prefix = if cluster {
            slot_prefix(&prefix)?
        } else {
            prefix.clone()
        };
        Ok(Keys {
            index: format!("{key_prefix}.ids"),
            channel: format!("{key_prefix}.events"),
            key_prefix,
            prefix,
        })
    }

    pub(super) fn record(&self, id: &str) -> String {
        format!("{}{id}", self.key_prefix)
    }

    pub(super) fn lock(&self, name: &str) -> String {
        format!("{}.lock:{name}", self.key_prefix)
    }

    /// `CLIENT SETNAME` allows only printable ASCII without spaces.
    pub(super) fn watch_connection_name(&self) -> String {
        format!("syncstatus-watch:{}", self.prefix)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect()
    }
}

/// The start of the keys of a store on a cluster: the scripts touch a record and the index in
/// one call, and a cluster runs a script only on keys of one slot. Redis hashes only the part
/// of a key within its first `{...}`, so every key that starts with the returned text hashes
/// alike: `prefix` itself when it holds a non-empty hash tag, else `{prefix}`.
fn slot_prefix(prefix: &str) -> Result<String> {
    if let Some(open) = prefix.find('{')
        && let Some(len) = prefix[open + 1..].find('}')
        && len > 0
    {
        return Ok(prefix.to_string());
    }
    if prefix.is_empty() {
        return Err(Error::Config(
            "a store on a Redis Cluster needs a key prefix: it becomes the hash tag that keeps \
             the store's keys in one slot"
                .into(),
        ));
    }
    Ok(format!("{{{prefix}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_connection_names_are_valid() {
        let keys = Keys::new("my app:\tjobs:".to_string(), false).unwrap();
        assert_eq!(
            keys.watch_connection_name(),
            "syncstatus-watch:my_app:_jobs:"
        );
    }

    #[test]
    fn keys_of_a_cluster_store_share_one_hash_tag() {
        let plain = Keys::new("app:".into(), false).unwrap();
        assert_eq!(plain.record("job"), "app:job");
        let keys = Keys::new("app:".into(), true).unwrap();
        assert_eq!(
            (keys.record("job"), keys.index.as_str(), keys.lock("sweep")),
            (
                "{app:}job".to_string(),
                "{app:}.ids",
                "{app:}.lock:sweep".to_string()
            )
        );
        // A prefix with a tag of its own is kept as it is.
        let tagged = Keys::new("app:{jobs}:".into(), true).unwrap();
        assert_eq!(tagged.record("job"), "app:{jobs}:job");
        // An empty or unclosed tag in the prefix would let the id choose the slot.
        for prefix in ["a{}b:", "a{b:"] {
            let keys = Keys::new(prefix.into(), true).unwrap();
            assert_eq!(keys.record("x"), format!("{{{prefix}}}x"), "{prefix}");
        }
        assert!(matches!(
            Keys::new(String::new(), true),
            Err(Error::Config(_))
        ));
    }
}
