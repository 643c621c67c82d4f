//! The conformance and lifecycle suites on a PostgreSQL that refuses connections without TLS
//! (`SYNCSTATUS_POSTGRES_TLS_URL`, with `sslmode=verify-full&sslrootcert=` of
//! `SYNCSTATUS_TLS_CA`), the other `sslmode`s, and the refusals of a server whose certificate
//! is not trusted or names another host. `.ci/run` starts that server with
//! `.ci/tls-services`; elsewhere the tests are skipped (and say so) unless `CI` or
//! `SYNCSTATUS_REQUIRE_SERVICES` is set.

#![cfg(feature = "postgres-tls")]

mod conformance;
mod lifecycle;
mod support;

use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{Fixture, standard_ttl};
use serde_json::json;
use syncstatus::postgres::PostgresStorage;
use syncstatus::{Error, ManualClock, PutMode, SyncStorage};

use support::tls_server::{TlsServer as Server, tls_server};

/// The TLS server, or `None` after saying so where none is set up and none is required.
fn server() -> Option<Server> {
    tls_server("PostgreSQL", "SYNCSTATUS_POSTGRES_TLS_URL")
}

/// The server URL without its TLS parameters, for building variants of it.
fn base_url(server: &Server) -> String {
    server
        .url
        .split_once('?')
        .map_or(server.url.clone(), |(base, _)| base.to_string())
}

fn unique_schema(name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let short: String = name
        .trim_start_matches("check_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    format!("sstls_{short}_{}_{n}", std::process::id())
}

/// A connection for the test's own SQL, verifying the server against the test CA.
async fn admin(server: &Server) -> tokio_postgres::Client {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_file_iter(&server.ca).unwrap() {
        roots.add(certificate.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let url = format!("{}?sslmode=require", base_url(server));
    let (client, connection) =
        tokio_postgres::connect(&url, tokio_postgres_rustls::MakeRustlsConnect::new(config))
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

/// Drops the schema when dropped, on a thread and runtime of its own (a destructor cannot
/// await).
struct DropSchema {
    ca: String,
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let server = Server {
            url: self.url.clone(),
            ca: self.ca.clone(),
            other_ca: String::new(),
        };
        let schema = self.schema.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                admin(&server)
                    .await
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop schema {}: {error}", self.schema),
            Err(_) => eprintln!("could not drop schema {}: cleanup panicked", self.schema),
        }
    }
}

async fn store_at(url: &str, schema: &str, clock: &ManualClock) -> Result<PostgresStorage, Error> {
    PostgresStorage::builder(url)
        .with_table("jobs")
        .with_schema(schema)?
        .with_ttl(standard_ttl())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
}

async fn make(name: &str) -> Option<Fixture> {
    let server = server()?;
    let schema = unique_schema(name);
    let guard = DropSchema {
        ca: server.ca.clone(),
        url: server.url.clone(),
        schema: schema.clone(),
    };
    let clock = ManualClock::starting_now();
    let store = store_at(&server.url, &schema, &clock).await.unwrap();
    let other = store_at(&server.url, &schema, &clock).await.unwrap();
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock,
        // Version exhaustion is checked on the plain servers: TLS changes the transport only.
        seed_max_version: None,
        _guard: Box::new(guard),
    })
}

all_conformance_tests!(make);
all_lifecycle_tests!(make);

/// Opens a store at `url` in a schema of its own, writes and reads one record, and returns
/// whether the store's connections use TLS, as the server sees them.
async fn round_trip(server: &Server, url: &str) -> Result<bool, Error> {
    let schema = unique_schema("round_trip");
    let _guard = DropSchema {
        ca: server.ca.clone(),
        url: server.url.clone(),
        schema: schema.clone(),
    };
    let store = store_at(url, &schema, &ManualClock::starting_now()).await?;
    let written = store
        .put("job", json!({"state": "running"}), PutMode::Create)
        .await?;
    assert_eq!(store.get("job").await?, Some(written));
    let row = admin(server)
        .await
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'syncstatus'",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

#[tokio::test]
async fn every_sslmode_that_encrypts_connects_over_tls() {
    let Some(server) = server() else { return };
    let base = base_url(&server);
    let ca = &server.ca;
    for query in [
        format!("sslmode=verify-full&sslrootcert={ca}"),
        format!("sslmode=verify-ca&sslrootcert={ca}"),
        format!("sslmode=require&sslrootcert={ca}"),
        "sslmode=require".to_string(),
        "sslmode=prefer".to_string(),
    ] {
        let url = format!("{base}?{query}");
        assert!(round_trip(&server, &url).await.unwrap(), "{query}: no TLS");
    }
    // verify-ca checks the chain only, so the host name in the URL need not match.
    let by_address = base.replace("localhost", "127.0.0.1");
    let url = format!("{by_address}?sslmode=verify-ca&sslrootcert={ca}");
    assert!(round_trip(&server, &url).await.unwrap());
}

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused_and_the_error_says_so() {
    let Some(server) = server() else { return };
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        base_url(&server),
        server.other_ca
    );
    let error = round_trip(&server, &url).await.unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("not signed by a trusted CA"), "{text}");
    assert!(text.contains("PostgreSQL at localhost:"), "{text}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_by_verify_full() {
    let Some(server) = server() else { return };
    // The certificate names `localhost` only.
    let url = server.url.replace("localhost", "127.0.0.1");
    let error = round_trip(&server, &url).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("does not name the host"), "{text}");
}

#[tokio::test]
async fn a_server_refusing_plain_connections_is_not_reached_with_sslmode_disable() {
    let Some(server) = server() else { return };
    let url = format!("{}?sslmode=disable", base_url(&server));
    let error = round_trip(&server, &url).await.unwrap_err();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
}
