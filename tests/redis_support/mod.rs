//! Setup shared by the tests on a Redis server and on a Redis Cluster: a store on a fresh key
//! prefix with a manual clock, a visible skip when the server is missing, and the removal of
//! the test's keys afterwards.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use syncstatus::redis::RedisStorage;
use syncstatus::{Error, ManualClock, TtlPolicy};

use crate::conformance::{Fixture, Seeder, standard_ttl};
use crate::skips;

/// Where the tests run: a store URL, the plain `redis://` URLs of its nodes (the server, or
/// every master of a cluster) for removing keys, and how a person points the tests at one.
#[derive(Clone)]
pub struct Server {
    pub url: String,
    pub nodes: Vec<String>,
    pub enable: &'static str,
}

pub fn unique_prefix(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("syncstatus-test:{name}:{}:{nanos}:", std::process::id())
}

/// Deletes every key that starts with `key_prefix`, on every node, when dropped.
pub struct KeyCleanup {
    pub nodes: Vec<String>,
    pub key_prefix: String,
}

impl Drop for KeyCleanup {
    fn drop(&mut self) {
        let nodes = self.nodes.clone();
        let pattern = format!("{}*", glob_escape(&self.key_prefix));
        // A plain thread with blocking connections: drop cannot await. Each node lists and
        // deletes the keys it holds, which a cluster node may delete.
        let result = std::thread::spawn(move || -> redis::RedisResult<()> {
            for node in nodes {
                let mut conn = redis::Client::open(node.as_str())?.get_connection()?;
                let keys: Vec<String> = redis::cmd("SCAN")
                    .cursor_arg(0)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .clone()
                    .iter(&mut conn)?
                    .collect::<redis::RedisResult<_>>()?;
                for key in keys {
                    redis::cmd("DEL").arg(key).query::<()>(&mut conn)?;
                }
            }
            Ok(())
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("could not remove the test keys under {}", self.key_prefix);
        }
    }
}

pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A store on `prefix` with a manual clock, or `None` (after saying so) when the server is
/// unreachable and none is required.
pub async fn store_on(
    server: &Server,
    prefix: &str,
    clock: &ManualClock,
    ttl: TtlPolicy,
) -> Option<RedisStorage> {
    match RedisStorage::builder(&server.url)
        .with_prefix(prefix)
        .with_ttl(ttl)
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
    {
        Ok(store) => Some(store),
        Err(error @ Error::Backend { .. }) => {
            skips::skip(
                &format!(
                    "Redis at {} is unreachable ({error})",
                    skips::redacted(&server.url)
                ),
                server.enable,
            );
            None
        }
        Err(error) => panic!("could not open a redis store: {error}"),
    }
}

pub struct Setup {
    pub store: RedisStorage,
    pub clock: ManualClock,
    pub prefix: String,
    pub guard: KeyCleanup,
}

pub async fn setup_with(server: &Server, name: &str, ttl: TtlPolicy) -> Option<Setup> {
    let prefix = unique_prefix(name);
    let clock = ManualClock::starting_now();
    let store = store_on(server, &prefix, &clock, ttl).await?;
    Some(Setup {
        guard: KeyCleanup {
            nodes: server.nodes.clone(),
            key_prefix: store.key_prefix().to_string(),
        },
        store,
        clock,
        prefix,
    })
}

/// The suites' fixture: two stores on one fresh prefix.
pub async fn fixture(
    server: &Server,
    name: &str,
    seed_max_version: impl FnOnce(RedisStorage) -> Option<Seeder>,
) -> Option<Fixture> {
    let setup = setup_with(server, name, standard_ttl()).await?;
    let other = store_on(server, &setup.prefix, &setup.clock, standard_ttl()).await?;
    Some(Fixture {
        other: Arc::new(other),
        seed_max_version: seed_max_version(setup.store.clone()),
        store: Arc::new(setup.store),
        clock: setup.clock,
        _guard: Box::new(setup.guard),
    })
}
