//! Helpers several test binaries share (`mod support;`); each binary uses a part of them.

#![allow(dead_code)]

pub mod child;
pub mod forwarding;
#[cfg(unix)]
pub mod job_worker;
pub mod listing;
pub mod memory_fixture;
pub mod status_watch;
pub mod tls_server;
pub mod watch_feed;
