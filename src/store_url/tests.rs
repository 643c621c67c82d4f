use super::*;

fn config_error(text: &str) -> String {
    match StoreUrl::parse(text) {
        Err(Error::Config(message)) => message,
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn bare_paths_and_file_urls_name_a_directory() {
    for (text, dir) in [
        ("./data/sync-status", "./data/sync-status"),
        ("data", "data"),
        ("/var/lib/jobs", "/var/lib/jobs"),
        ("./a:b", "./a:b"),
        ("C:\\jobs", "C:\\jobs"),
        ("file:./data", "./data"),
        ("file:/abs", "/abs"),
        ("file:///abs", "/abs"),
        ("FILE:rel", "rel"),
    ] {
        assert_eq!(
            StoreUrl::parse(text).unwrap(),
            StoreUrl::File(PathBuf::from(dir)),
            "{text}"
        );
    }
    assert_eq!(StoreUrl::parse("memory:").unwrap(), StoreUrl::Memory);
    config_error("file:");
    config_error("");
    config_error("memory:x");
    assert!(config_error("nonsense:x").contains("nonsense"));
}

#[test]
fn redis_parameters_are_checked() {
    assert!(matches!(
        StoreUrl::parse("redis://127.0.0.1:6379/0?prefix=a:&protocol=resp3"),
        Ok(StoreUrl::Redis(_))
    ));
    let message = config_error("redis://127.0.0.1/0?prefx=a:");
    assert!(message.contains("prefx"), "{message}");
    let message = config_error("redis://127.0.0.1/0?prefix=a&prefix=b");
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn cluster_urls_name_their_seed_nodes() {
    let url = StoreUrl::parse("redis+cluster://u:SECRET@127.0.0.1:7001,127.0.0.1:7002/?prefix=a:")
        .unwrap();
    let StoreUrl::RedisCluster(nodes) = &url else {
        panic!("{url:?}");
    };
    let nodes: Vec<&str> = nodes.iter().map(Url::as_str).collect();
    assert_eq!(
        nodes,
        [
            "redis://u:SECRET@127.0.0.1:7001/?prefix=a:",
            "redis://u:SECRET@127.0.0.1:7002/?prefix=a:"
        ]
    );
    assert_eq!(
        url.to_string(),
        "redis+cluster://u:***@127.0.0.1:7001,127.0.0.1:7002/?prefix=a:"
    );
    assert_eq!(
        cluster_text(url_nodes(&url), false),
        "redis+cluster://u:SECRET@127.0.0.1:7001,127.0.0.1:7002/?prefix=a:"
    );
    let tls = StoreUrl::parse("rediss+cluster://h:1").unwrap();
    assert_eq!(url_nodes(&tls)[0].scheme(), "rediss");
    for (text, why) in [
        ("redis+cluster://h:1,,h:2", "empty"),
        ("redis+cluster://h:1/1", "database 0"),
        ("redis+cluster://h:x", "not host:port"),
        ("redis+cluster://:SECRET@h:1?prefx=a", "prefx"),
    ] {
        let message = config_error(text);
        assert!(message.contains(why), "{text}: {message}");
        assert!(!message.contains("SECRET"), "{message}");
    }
}

fn url_nodes(url: &StoreUrl) -> &[Url] {
    match url {
        StoreUrl::RedisCluster(nodes) => nodes,
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "redis-cluster")]
#[test]
fn the_prefix_comes_out_of_a_cluster_url() {
    let (nodes, prefix) =
        redis_cluster_parts("redis+cluster://h:1,h:2?prefix=x:&protocol=resp3").unwrap();
    assert_eq!(
        nodes,
        ["redis://h:1?protocol=resp3", "redis://h:2?protocol=resp3"]
    );
    assert_eq!(prefix.as_deref(), Some("x:"));
}

#[test]
fn postgres_parameters_given_twice_are_refused() {
    let message = config_error("postgres://u:pw@h/db?table=a&table=b");
    assert!(message.contains("`table` is given twice"), "{message}");
    assert!(!message.contains("pw"), "{message}");
    assert!(matches!(
        StoreUrl::parse("postgresql://h/db?sslmode=disable&table=t"),
        Ok(StoreUrl::Postgres(_))
    ));
    let message = config_error("postgres://h/db?tabel=t");
    assert!(message.contains("unknown parameter `tabel`"), "{message}");
}

#[cfg(feature = "redis")]
#[test]
fn the_prefix_comes_out_of_a_redis_url() {
    let (url, prefix) = redis_parts("redis://127.0.0.1:6379/0?prefix=app%3Ajobs:").unwrap();
    assert_eq!(url, "redis://127.0.0.1:6379/0");
    assert_eq!(prefix.as_deref(), Some("app:jobs:"));
    let (url, prefix) = redis_parts("redis://127.0.0.1/1?protocol=resp3&prefix=x:").unwrap();
    assert_eq!(url, "redis://127.0.0.1/1?protocol=resp3");
    assert_eq!(prefix.as_deref(), Some("x:"));
    assert_eq!(
        redis_parts("redis://h/0").unwrap(),
        ("redis://h/0".to_string(), None)
    );
    assert!(matches!(
        redis_parts("redis://h/0?prefix=a&foo=bar"),
        Err(Error::Config(_))
    ));
}

#[cfg(feature = "postgres")]
#[test]
fn table_and_schema_come_out_of_a_postgres_url() {
    let (url, table, schema) =
        postgres_parts("postgres://u@h:5432/db?table=t&sslmode=disable&schema=s").unwrap();
    assert_eq!(url, "postgres://u@h:5432/db?sslmode=disable");
    assert_eq!(table.as_deref(), Some("t"));
    assert_eq!(schema.as_deref(), Some("s"));
    let (url, table, _) = postgres_parts("host=h user=u").unwrap();
    assert_eq!((url.as_str(), table), ("host=h user=u", None));
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_builders_do_not_show_the_password() {
    let builder = crate::postgres::PostgresStorage::builder("postgres://u:SECRET@h/db");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("SECRET") && shown.contains("u:***@h"),
        "{shown}"
    );
}

#[cfg(feature = "redis")]
#[test]
fn redis_builders_do_not_show_the_password() {
    let builder = crate::redis::RedisStorage::builder("redis://u:SECRET@h:6379/0");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("SECRET") && shown.contains("u:***@h"),
        "{shown}"
    );
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redact("redis://user:secret@host:6379/0"),
        "redis://user:***@host:6379/0"
    );
    assert_eq!(redact("redis://:secret@host/0"), "redis://:***@host/0");
    assert_eq!(redact("redis://host:6379/0"), "redis://host:6379/0");
    assert_eq!(
        redact("postgres://u:SECRET@127.0.0.1:99999/db"),
        "postgres://u:***@127.0.0.1:99999/db"
    );
    let url = StoreUrl::parse("postgres://u:SECRET@127.0.0.1:1/db").unwrap();
    assert!(!url.to_string().contains("SECRET"));
    assert!(!format!("{url:?}").contains("SECRET"));
    assert_eq!(redact("./data/x"), "./data/x");
}
