//! The conformance and lifecycle suites on a Redis that speaks only TLS
//! (`SYNCSTATUS_REDIS_TLS_URL`, a `rediss://` URL, trusting `SYNCSTATUS_TLS_CA`), and the
//! refusals of a server whose certificate is not trusted or names another host. `.ci/run`
//! starts that server with `.ci/tls-services`; elsewhere the tests are skipped (and say so)
//! unless `CI` or `SYNCSTATUS_REQUIRE_SERVICES` is set.

#![cfg(feature = "redis-tls")]

mod conformance;
mod lifecycle;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conformance::{Fixture, standard_ttl};
use serde_json::json;
use syncstatus::redis::RedisStorage;
use syncstatus::{Error, ManualClock, PutMode, SyncStorage};

use support::tls_server::{TlsServer as Server, tls_server};

/// The TLS server, or `None` after saying so where none is set up and none is required.
fn server() -> Option<Server> {
    tls_server("Redis", "SYNCSTATUS_REDIS_TLS_URL")
}

fn unique_prefix(name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("syncstatus-tls-test:{name}:{}:{n}:", std::process::id())
}

/// Deletes every key under the prefix when dropped, over a TLS connection of its own.
struct KeyCleanup {
    url: String,
    ca: String,
    prefix: String,
}

impl Drop for KeyCleanup {
    fn drop(&mut self) {
        let (url, ca) = (self.url.clone(), self.ca.clone());
        let pattern = format!("{}*", self.prefix.replace('*', "\\*"));
        let result = std::thread::spawn(
            move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                let client = redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(std::fs::read(ca)?),
                    },
                )?;
                let mut conn = client.get_connection()?;
                let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query(&mut conn)?;
                for chunk in keys.chunks(500) {
                    redis::cmd("DEL").arg(chunk).query::<()>(&mut conn)?;
                }
                Ok(())
            },
        )
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("could not remove the test keys under {}", self.prefix);
        }
    }
}

async fn store_on(server: &Server, prefix: &str, clock: &ManualClock) -> RedisStorage {
    RedisStorage::builder(&server.url)
        .with_tls_ca_file(&server.ca)
        .with_prefix(prefix)
        .with_ttl(standard_ttl())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

async fn make(name: &str) -> Option<Fixture> {
    let server = server()?;
    let prefix = unique_prefix(name);
    let clock = ManualClock::starting_now();
    let store = store_on(&server, &prefix, &clock).await;
    let other = store_on(&server, &prefix, &clock).await;
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock,
        // Version exhaustion is checked on the plain servers: TLS changes the transport only.
        seed_max_version: None,
        _guard: Box::new(KeyCleanup {
            url: server.url,
            ca: server.ca,
            prefix,
        }),
    })
}

all_conformance_tests!(make);
all_lifecycle_tests!(make);

#[tokio::test]
async fn a_server_signed_by_another_ca_is_refused_and_the_error_says_so() {
    let Some(server) = server() else { return };
    let error = RedisStorage::builder(&server.url)
        .with_tls_ca_file(&server.other_ca)
        .build()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    assert!(text.contains("not signed by a trusted CA"), "{text}");
}

#[tokio::test]
async fn a_certificate_for_another_host_name_is_refused_and_the_error_says_so() {
    let Some(server) = server() else { return };
    // The certificate names `localhost` only.
    let url = server.url.replace("localhost", "127.0.0.1");
    let error = RedisStorage::builder(&url)
        .with_tls_ca_file(&server.ca)
        .build()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("does not name the host"), "{text}");
}

#[tokio::test]
async fn a_store_on_the_applications_own_client_works() {
    let Some(server) = server() else { return };
    let prefix = unique_prefix("own-client");
    let _cleanup = KeyCleanup {
        url: server.url.clone(),
        ca: server.ca.clone(),
        prefix: prefix.clone(),
    };
    let client = redis::Client::build_with_tls(
        server.url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&server.ca).unwrap()),
        },
    )
    .unwrap();
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let store = RedisStorage::builder_from_client(client)
        .with_connection_manager(manager)
        .with_prefix(&prefix)
        .build()
        .await
        .unwrap();
    let written = store
        .put("job", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("job").await.unwrap(), Some(written));
}

#[tokio::test]
async fn a_ca_file_without_certificates_is_a_config_error_naming_it() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let error = RedisStorage::builder(&server.url)
        .with_tls_ca_file(&empty)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(error.to_string().contains("empty.pem"), "{error}");
}
