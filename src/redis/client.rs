//! The Redis client of a store: from a URL (with TLS for `rediss://`, trusting the platform's
//! roots or a given CA), or handed over by the application.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a store's connections come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// A URL (the store's own `prefix` parameter already taken out).
    Url {
        url: String,
        /// A PEM file of the certificates to trust for `rediss://`, instead of the platform's.
        tls_ca: Option<PathBuf>,
    },
    /// The application's own client, with whatever TLS settings it was built with.
    Client(redis::Client),
}

/// Opens the client for `url`.
pub(crate) fn open(url: &str, tls_ca: Option<&PathBuf>, redacted: &str) -> Result<redis::Client> {
    let tls = url.starts_with("rediss://");
    #[cfg(not(feature = "redis-tls"))]
    if tls || tls_ca.is_some() {
        return Err(Error::Config(format!(
            "TLS to Redis (`{redacted}`) needs syncstatus built with the `redis-tls` feature"
        )));
    }
    let invalid = |error: redis::RedisError| {
        Error::Config(format!("invalid redis URL `{redacted}`: {error}"))
    };
    match tls_ca {
        #[cfg(feature = "redis-tls")]
        Some(path) => {
            if !tls {
                return Err(Error::Config(format!(
                    "a TLS CA file is given but `{redacted}` is not a rediss:// URL"
                )));
            }
            install_provider();
            let root_cert = crate::tls::read_pem(path)?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(invalid)
        }
        _ => {
            #[cfg(feature = "redis-tls")]
            if tls {
                install_provider();
            }
            redis::Client::open(url).map_err(invalid)
        }
    }
}

/// The Redis client builds its TLS settings with rustls's process-wide provider: make it ours
/// unless the application chose one.
#[cfg(feature = "redis-tls")]
fn install_provider() {
    // An error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn tls_without_the_feature_says_which_feature() {
        let error = open(
            "rediss://localhost:6390/0",
            None,
            "rediss://localhost:6390/0",
        )
        .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error:?}");
        assert!(error.to_string().contains("redis-tls"), "{error}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let ca = PathBuf::from("/nonexistent/ca.pem");
        let error = open(
            "redis://localhost:6379/0",
            Some(&ca),
            "redis://localhost:6379/0",
        )
        .unwrap_err();
        assert!(error.to_string().contains("not a rediss:// URL"), "{error}");
    }
}
