//! The conformance, lifecycle and jobs suites on a Redis Cluster
//! (`SYNCSTATUS_REDIS_CLUSTER_URL`, a `redis+cluster://host:port,host:port` URL), and what a
//! cluster changes: every key of a store in one slot, and a watch that hears writes made on
//! another node. `.ci/run` starts a cluster of three masters with `.ci/redis-cluster`;
//! elsewhere the tests are skipped (and say so) unless `CI` or `SYNCSTATUS_REQUIRE_SERVICES`
//! is set.

#![cfg(feature = "redis-cluster")]

mod conformance;
mod jobs;
mod lifecycle;
mod redis_support;
mod skips;
mod support;

use conformance::{EVENT_DEADLINE, Fixture, standard_ttl};
use futures_util::StreamExt;
use redis_support::Server;
use serde_json::json;
use syncstatus::{PutMode, SyncStorage, WatchEvent, WatchOptions, WatchSelector};

const URL_VAR: &str = "SYNCSTATUS_REDIS_CLUSTER_URL";
const ENABLE: &str = "source .ci/redis-cluster DIR to start one on ports 7001-7003, or point \
                      SYNCSTATUS_REDIS_CLUSTER_URL at one";

/// The cluster, or `None` after saying so where none is configured and none is required.
fn server() -> Option<Server> {
    let url = std::env::var(URL_VAR).ok().filter(|url| !url.is_empty());
    let Some(url) = url else {
        skips::skip(
            &format!("no Redis Cluster configured ({URL_VAR} is unset)"),
            ENABLE,
        );
        return None;
    };
    Some(Server {
        nodes: seed_nodes(&url),
        url,
        enable: ENABLE,
    })
}

/// `redis://host:port` of every seed node of a cluster URL without credentials.
fn seed_nodes(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority
        .split(',')
        .map(|node| format!("redis://{node}"))
        .collect()
}

async fn make(name: &str) -> Option<Fixture> {
    // Version exhaustion is checked on the single server: the cluster changes where keys
    // live, not the write script.
    redis_support::fixture(&server()?, name, |_| None).await
}

all_conformance_tests!(make);
all_lifecycle_tests!(make);
all_jobs_tests!(make);

async fn node(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn slot_of(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_store_hashes_to_one_slot() {
    let Some(server) = server() else { return };
    let Some(s) = redis_support::setup_with(&server, "one_slot", standard_ttl()).await else {
        return;
    };
    assert_eq!(s.store.key_prefix(), format!("{{{}}}", s.prefix));
    for id in ["a", "b", "job-1", "zzz"] {
        s.store
            .put(id, json!({"state": "running"}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let mut conn = node(&server.nodes[0]).await;
    let slot = slot_of(&mut conn, &format!("{}.ids", s.store.key_prefix())).await;
    for id in ["a", "b", "job-1", "zzz"] {
        let key = s.store.key_of(id).unwrap();
        assert_eq!(slot_of(&mut conn, &key).await, slot, "{key}");
    }
    let listed = s.store.list(&Default::default()).await.unwrap();
    assert_eq!(listed.records.len(), 4, "{:?}", listed.errors);
}

/// The node that serves `slot`, as `redis://host:port`.
async fn owner_of(conn: &mut redis::aio::MultiplexedConnection, slot: i64) -> String {
    // Each entry: [first slot, last slot, [host, port, id], replicas...].
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .unwrap();
    for range in ranges {
        let redis::Value::Array(fields) = range else {
            continue;
        };
        let (Some(redis::Value::Int(first)), Some(redis::Value::Int(last))) =
            (fields.first(), fields.get(1))
        else {
            continue;
        };
        if (*first..=*last).contains(&slot)
            && let Some(redis::Value::Array(master)) = fields.get(2)
            && let (Some(redis::Value::BulkString(host)), Some(redis::Value::Int(port))) =
                (master.first(), master.get(1))
        {
            return format!("redis://{}:{port}", String::from_utf8_lossy(host));
        }
    }
    panic!("no node serves slot {slot}");
}

/// Writes run on the node of the store's slot; a watch that subscribed on another node hears
/// them, because a cluster passes a classic PUBLISH to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_subscribed_on_another_node_hears_every_write() {
    let Some(server) = server() else { return };
    if server.nodes.len() < 2 {
        skips::skip("the cluster URL names one node", ENABLE);
        return;
    }
    let Some(s) = redis_support::setup_with(&server, "other_node", standard_ttl()).await else {
        return;
    };
    let mut conn = node(&server.nodes[0]).await;
    let slot = slot_of(&mut conn, &s.store.key_of("job").unwrap()).await;
    let owner = owner_of(&mut conn, slot).await;
    let elsewhere = server
        .nodes
        .iter()
        .find(|node| **node != owner)
        .expect("another node");
    // Opened by URL with only that node as seed: the watch subscribes there, commands find
    // their slot's node through the topology the cluster reports.
    let url = format!(
        "redis+cluster://{}/?prefix={}",
        elsewhere.trim_start_matches("redis://"),
        s.prefix.replace(':', "%3A")
    );
    let watching = syncstatus::open(&url).await.unwrap();
    let mut stream = watching
        .watch(WatchSelector::ids(["job"]), WatchOptions::default())
        .await
        .unwrap();
    let written = s
        .store
        .put("job", json!({"state": "running", "n": 1}), PutMode::Create)
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(EVENT_DEADLINE, stream.next())
            .await
            .expect("a watch event in time")
            .expect("the watch goes on")
            .unwrap();
        match event {
            WatchEvent::Upsert(record) if record.version == written.version => {
                assert_eq!(*record, written);
                break;
            }
            WatchEvent::Resync(records) if records.iter().any(|r| **r == written) => break,
            _ => {}
        }
    }
    // The store opened by URL reads what the other wrote.
    assert_eq!(watching.get("job").await.unwrap(), Some(written));
}

#[test]
fn a_missing_cluster_is_reported_as_a_visible_skip() {
    let stderr = skips::stderr_of_skipping_run(
        &std::env::current_exe().unwrap(),
        "check_get_missing_is_none",
        &[(URL_VAR, "")],
    );
    let expected = "SKIPPED check_get_missing_is_none: no Redis Cluster configured";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(stderr.contains(".ci/redis-cluster"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_connection_manager_is_refused_for_a_cluster() {
    let Some(server) = server() else { return };
    let client = redis::Client::open(server.nodes[0].as_str()).unwrap();
    let manager = redis::aio::ConnectionManager::new(client).await.unwrap();
    let error = syncstatus::redis::RedisStorage::builder(&server.url)
        .with_connection_manager(manager)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, syncstatus::Error::Config(_)), "{error:?}");
    assert!(error.to_string().contains("is a cluster"), "{error}");
}
