//! The JSON Schema of the record file (schema/record.schema.json) describes what the file
//! store writes, and a file a foreign writer makes by it is read as it says.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncstatus::{
    FileStorage, ManualClock, Progress, PutMode, SyncStatus, SyncStorage, SyncStorageExt,
    Timestamp, TtlPolicy,
};

fn schema() -> Value {
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/record.schema.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .unwrap()
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn store(dir: &std::path::Path, clock: &ManualClock, ttl: TtlPolicy) -> FileStorage {
    FileStorage::builder(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_ttl(ttl)
        .with_lazy_sweep(None)
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_file_the_store_writes_follows_the_schema() {
    let schema = schema();
    let record_schema = validator(&schema);
    let mut status_schema = schema["$defs"]["SyncStatus"].clone();
    status_schema["$schema"] = schema["$schema"].clone();
    let status_schema = validator(&status_schema);
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let ttl = TtlPolicy::uniform(Duration::from_secs(60)).with_state("failed", None);
    let store = store(tmp.path(), &clock, ttl);

    let mut status = SyncStatus::pending().start(syncstatus::Clock::now(&clock));
    status.progress = Some(Progress::new(40, 600));
    status.message = Some("page 4".into());
    let typed = serde_json::to_value(&status).unwrap();
    store
        .put("job-1", typed.clone(), PutMode::Create)
        .await
        .unwrap();
    store
        .update_with("job-1", |_| Ok(json!({"state": "failed", "error": "boom"})))
        .await
        .unwrap();
    store
        .put("plain.value-2", json!([1, "two", null]), PutMode::Overwrite)
        .await
        .unwrap();
    for id in ["job-1", "plain.value-2"] {
        let file: Value =
            serde_json::from_slice(&fs::read(tmp.path().join(format!("{id}.json"))).unwrap())
                .unwrap();
        assert_eq!(
            errors(&record_schema, &file),
            Vec::<String>::new(),
            "{id}: {file}"
        );
    }
    let never: Value =
        serde_json::from_slice(&fs::read(tmp.path().join("job-1.json")).unwrap()).unwrap();
    assert_eq!(
        never["expires_at"],
        Value::Null,
        "failed never expires by this policy"
    );
    assert_eq!(errors(&status_schema, &typed), Vec::<String>::new());
    assert_eq!(
        errors(&status_schema, &never["status"]),
        Vec::<String>::new()
    );
}

#[test]
fn the_schema_refuses_what_the_store_refuses() {
    let record_schema = validator(&schema());
    let good = json!({
        "id": "job-1", "version": 1, "created_at": "2026-12-02T01:00:00.000Z",
        "updated_at": "2026-12-02T01:00:00.000Z", "expires_at": null, "status": {}
    });
    assert!(record_schema.is_valid(&good));
    for (what, key, value) in [
        ("a path in the id", "id", json!("../etc/passwd")),
        ("a leading dot", "id", json!(".hidden")),
        ("a trailing dot", "id", json!("job.")),
        ("version 0", "version", json!(0)),
        ("a time that is no time", "updated_at", json!("yesterday")),
        ("an unknown key", "owner", json!("me")),
    ] {
        let mut bad = good.clone();
        bad[key] = value;
        assert!(!record_schema.is_valid(&bad), "{what}: {bad}");
    }
}

#[tokio::test]
async fn a_file_a_foreign_writer_makes_by_the_schema_reads_as_it_says() {
    let record_schema = validator(&schema());
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(Timestamp::parse("2026-12-02T01:00:00Z").unwrap());
    let store = store(
        tmp.path(),
        &clock,
        TtlPolicy::uniform(Duration::from_secs(3600)),
    );
    // Written by, say, a Node process: its own expiry, shorter than the store's policy.
    let file = json!({
        "id": "import-7", "version": 3, "created_at": "2026-12-02T00:00:00.000Z",
        "updated_at": "2026-12-02T00:59:00.000Z", "expires_at": "2026-12-02T01:05:00.000Z",
        "status": {"state": "running", "progress": {"done": 1, "total": 3}}
    });
    assert!(record_schema.is_valid(&file));
    fs::write(
        tmp.path().join("import-7.json"),
        serde_json::to_vec_pretty(&file).unwrap(),
    )
    .unwrap();
    let read = store.get("import-7").await.unwrap().unwrap();
    assert_eq!(read.version, 3);
    assert_eq!(read.expires_at, Timestamp::parse("2026-12-02T01:05:00Z"));
    clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(
        store.get("import-7").await.unwrap(),
        None,
        "expired by the file's own expires_at, not the store's hour"
    );
}
