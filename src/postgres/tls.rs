//! TLS to PostgreSQL: `sslmode` and `sslrootcert` as libpq reads them, and connections made
//! with or without TLS behind one type.
//!
//! The driver itself knows only `disable`, `prefer` and `require`, and no root certificate
//! file, so both parameters are taken out of the URL here and the rest is left to it.

use std::fmt;
use std::path::PathBuf;

use deadpool_postgres::{Manager, ManagerConfig};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::error::{Error, Result};

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; nothing here talks to a server that
            // refuses plain connections and accepts TLS, so it is `prefer`.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "unknown sslmode `{other}` (expected disable, prefer, require, verify-ca or \
                     verify-full)"
                )));
            }
        })
    }
}

/// The TLS settings of a store's connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    mode: SslMode,
    root_cert: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of the query of a URL. Key-value connection strings
/// are passed through to the driver untouched.
pub(crate) fn take_tls_params(url: &str) -> Result<(String, TlsSettings)> {
    let mut settings = TlsSettings::default();
    let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
        return Ok((url.to_string(), settings));
    };
    let mut rest = Vec::new();
    let mut seen_mode = false;
    let mut seen_root = false;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => {
                if std::mem::replace(&mut seen_mode, true) {
                    return Err(Error::Config("sslmode is given twice".into()));
                }
                settings.mode = SslMode::parse(value)?;
            }
            Some(("sslrootcert", value)) => {
                if std::mem::replace(&mut seen_root, true) {
                    return Err(Error::Config("sslrootcert is given twice".into()));
                }
                settings.root_cert = Some(PathBuf::from(percent_decode(value)?));
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, settings))
}

fn percent_decode(text: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| Error::Config(format!("bad percent escape in `{text}`")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config(format!("`{text}` is not UTF-8")))
}

impl TlsSettings {
    /// The settings the driver's own mode stands for, with the platform's roots.
    pub(crate) fn for_driver_mode(mode: tokio_postgres::config::SslMode) -> Self {
        let mode = match mode {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        TlsSettings {
            mode,
            root_cert: None,
        }
    }

    /// The mode the driver is given: it negotiates, we verify.
    pub(crate) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// What connections are made with.
    pub(crate) fn connector(&self) -> Result<Connector> {
        #[cfg(feature = "postgres-tls")]
        {
            use crate::tls::{Roots, Verification, client_config};
            let roots = self.root_cert.clone().map_or(Roots::Platform, Roots::File);
            let verification = match self.mode {
                SslMode::Disable => return Ok(Connector::Plain),
                // As libpq: a root certificate file makes `require` check the chain.
                SslMode::Prefer | SslMode::Require if self.root_cert.is_some() => {
                    Verification::ChainOnly
                }
                SslMode::Prefer | SslMode::Require => Verification::None,
                SslMode::VerifyCa => Verification::ChainOnly,
                SslMode::VerifyFull => Verification::Full,
            };
            let config = client_config(&roots, verification)?;
            Ok(Connector::Tls(
                tokio_postgres_rustls::MakeRustlsConnect::new(config),
            ))
        }
        #[cfg(not(feature = "postgres-tls"))]
        {
            match self.mode {
                SslMode::Disable | SslMode::Prefer if self.root_cert.is_none() => {
                    Ok(Connector::Plain)
                }
                _ => Err(Error::Config(
                    "TLS to PostgreSQL (sslmode=require, verify-ca, verify-full or sslrootcert) \
                     needs syncstatus built with the `postgres-tls` feature"
                        .into(),
                )),
            }
        }
    }
}

/// Makes connections, with TLS or without.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    #[cfg(feature = "postgres-tls")]
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connector::Plain => f.write_str("Plain"),
            #[cfg(feature = "postgres-tls")]
            Connector::Tls(_) => f.write_str("Tls"),
        }
    }
}

/// The messages a connection receives that answer no query (notifications, notices), and
/// its end.
pub(crate) type Messages =
    BoxStream<'static, std::result::Result<AsyncMessage, tokio_postgres::Error>>;

impl Connector {
    /// A pool manager making its connections this way.
    pub(crate) fn manager(
        &self,
        config: tokio_postgres::Config,
        settings: ManagerConfig,
    ) -> Manager {
        match self {
            Connector::Plain => Manager::from_config(config, NoTls, settings),
            #[cfg(feature = "postgres-tls")]
            Connector::Tls(tls) => Manager::from_config(config, tls.clone(), settings),
        }
    }

    /// One connection of its own, and the stream of its messages that must be polled for the
    /// connection to make progress.
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> std::result::Result<(Client, Messages), tokio_postgres::Error> {
        match self {
            Connector::Plain => {
                let (client, mut connection) = config.connect(NoTls).await?;
                let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                Ok((client, messages.boxed()))
            }
            #[cfg(feature = "postgres-tls")]
            Connector::Tls(tls) => {
                let (client, mut connection) = config.connect(tls.clone()).await?;
                let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                Ok((client, messages.boxed()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let (url, settings) = take_tls_params(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h/db?application_name=x");
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(settings.root_cert, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(
            settings.driver_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn bad_tls_parameters_are_refused() {
        for url in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?sslmode=require&sslmode=disable",
            "postgres://h/db?sslrootcert=a&sslrootcert=b",
        ] {
            assert!(
                matches!(take_tls_params(url), Err(Error::Config(_))),
                "{url}"
            );
        }
    }

    #[cfg(not(feature = "postgres-tls"))]
    #[test]
    fn tls_without_the_feature_says_which_feature() {
        let (_, settings) = take_tls_params("postgres://h/db?sslmode=require").unwrap();
        let error = settings.connector().unwrap_err();
        assert!(error.to_string().contains("postgres-tls"), "{error}");
    }
}
