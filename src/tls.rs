//! TLS client settings shared by the Redis and PostgreSQL stores: which roots are trusted and
//! how much of the server's certificate is checked.
//!
//! rustls with the ring provider, chosen explicitly so that an application which also compiles
//! another provider (aws-lc-rs) does not make rustls refuse to pick one.

// Each backend uses a part of this; with one backend's feature alone the rest goes unused.
#![cfg_attr(
    not(all(feature = "redis-tls", feature = "postgres-tls")),
    allow(dead_code)
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Error, Result};

/// How much of the server's certificate a connection checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verification {
    /// The chain up to a trusted root and the host name (libpq's `verify-full`).
    Full,
    /// The chain up to a trusted root, not the host name (libpq's `verify-ca`).
    ChainOnly,
    /// Nothing: encryption against passive listeners only (libpq's `require` and `prefer`
    /// without a root certificate file).
    None,
}

/// The certificates a connection trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The operating system's store (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
    Platform,
    /// The certificates of one PEM file.
    File(PathBuf),
}

/// The process's crypto provider for our connections.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots` and checking as `verification` says.
pub(crate) fn client_config(roots: &Roots, verification: Verification) -> Result<ClientConfig> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Config(format!("TLS settings: {error}")))?;
    let chain = match verification {
        Verification::Full => {
            return Ok(builder
                .with_webpki_verifier(webpki_verifier(roots, provider)?)
                .with_no_client_auth());
        }
        Verification::ChainOnly => Some(webpki_verifier(roots, provider.clone())?),
        Verification::None => None,
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Lenient { chain, provider }))
        .with_no_client_auth())
}

/// The certificates of a PEM file, as the bytes of the file (what the Redis client takes),
/// checked to hold at least one certificate.
pub(crate) fn read_pem(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    certificates_in(path, &bytes)?;
    Ok(bytes)
}

fn certificates_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            Error::Config(format!(
                "CA file {} is not PEM certificates: {error}",
                path.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(Error::Config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

fn root_store(roots: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let pem = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            for certificate in certificates_in(path, &pem)? {
                store.add(certificate).map_err(|error| {
                    Error::Config(format!(
                        "CA file {} holds a certificate that cannot be a root: {error}",
                        path.display()
                    ))
                })?;
            }
        }
        Roots::Platform => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |error| format!(" ({error})"));
                return Err(Error::Config(format!(
                    "no trusted root certificates found on this system{why}; give a CA file"
                )));
            }
        }
    }
    Ok(store)
}

fn webpki_verifier(
    roots: &Roots,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider)
        .build()
        .map_err(|error| Error::Config(format!("TLS roots: {error}")))
}

/// Checks less of the server's certificate than WebPKI does: the chain up to a trusted root
/// but not the host name (`chain: Some`), or nothing (`chain: None`). The handshake's
/// signatures are checked with the provider's algorithms either way, as WebPKI checks them,
/// so the server must still hold the key of the certificate it shows.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS handshake that failed, said in words: which server, and what was wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("TLS with {server} failed: {problem}")]
pub(crate) struct HandshakeFailed {
    server: String,
    problem: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// `error` with a TLS handshake failure found in its causes said in words; other errors as
/// they are.
pub(crate) fn clarify(error: Error, server: &str) -> Error {
    let Error::Backend { store, source } = error else {
        return error;
    };
    match find_tls_error(&*source).map(problem_of) {
        Some(problem) => Error::Backend {
            store,
            source: Box::new(HandshakeFailed {
                server: server.to_string(),
                problem,
                source,
            }),
        },
        None => Error::Backend { store, source },
    }
}

fn find_tls_error<'a>(
    error: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(mut error) = current {
        // The Redis client keeps its causes as `Arc<dyn Error>`: look through the `Arc`.
        if let Some(shared) = error.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>() {
            error = &**shared;
        }
        let found = error.downcast_ref::<rustls::Error>().or_else(|| {
            // An I/O error's `source` skips the error it wraps: look inside it.
            error
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if found.is_some() {
            return found;
        }
        current = error.source();
    }
    None
}

fn problem_of(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "its certificate is not signed by a trusted CA (check the CA file or the \
                 platform's roots)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "its certificate does not name the host connected to (connect by the name in \
                 the certificate, or use verify-ca)"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "its certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "its certificate is not valid yet (check the clock)"
            }
            CertificateError::Revoked => "its certificate was revoked",
            _ => "its certificate was refused",
        },
        rustls::Error::AlertReceived(_) => "the server refused the handshake",
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoCertificatesPresented => {
            "the server offers nothing this client accepts"
        }
        _ => "the handshake did not complete",
    }
}
