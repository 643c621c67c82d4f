//! The watch machinery shared by every backend.
//!
//! ```text
//!  backend change feed ──ids / rescan / lost──▶ Changes ──wake──▶ Reconciler ──▶ WatchHub ──▶ streams
//!  (notify, pub/sub, LISTEN, own writes)          (dirty set)     (reads, scans,  (last state,
//!                                                                  expiry, backoff) fan-out)
//! ```
//!
//! A backend writes only what differs: a [`ChangeSource`] (start its feed, read ids, scan
//! everything) whose feed reports to [`Changes`]. The [`reconciler`] owns the dirty set, the
//! expiry queue ([`expiry`]), the pauses between retries ([`backoff`]) and every resync; the
//! [`hub`] owns the subscribers.

mod backoff;
mod expiry;
mod fanout;
mod hub;
mod reconciler;

pub(crate) use backoff::Backoff;
#[cfg(test)]
pub(crate) use expiry::EXPIRY_LOOK;
pub(crate) use hub::{HubHandle, SharedHub};
pub(crate) use reconciler::{
    ChangeSource, Changes, Duty, Reads, Scan, Settings, start, start_seeded,
};
