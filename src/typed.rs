//! The typed facade: serde at the edge, JSON and metadata in the backends.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};
use crate::status::SyncStatus;
use crate::storage::{DynSyncStorage, ListFilter, PutMode, SyncStorage};

/// A record whose status is of the caller's type.
#[derive(Clone, Debug, PartialEq)]
pub struct TypedRecord<T> {
    /// The id.
    pub id: String,
    /// The version (see [`Record::version`]).
    pub version: u64,
    /// When this incarnation was created.
    pub created_at: Timestamp,
    /// When it was last written.
    pub updated_at: Timestamp,
    /// When it expires; `None`: never (see [`Record::expires_at`]).
    pub expires_at: Option<Timestamp>,
    /// The status.
    pub status: T,
}

/// A store of `T` values over any backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncstatus::Result<()> {
/// use syncstatus::{Progress, StatusStore, SyncStatus};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = StatusStore::<SyncStatus>::open(&format!("file:{}", dir.path().display())).await?;
/// let now = store.now();
/// store.put("sync-1", &SyncStatus::pending().start(now)).await?;
/// let record = store
///     .update("sync-1", |status| {
///         let status = status.unwrap_or_default();
///         Ok(status.with_progress(Progress::new(40, 600)))
///     })
///     .await?;
/// assert_eq!(record.version, 2);
/// assert_eq!(record.status.progress, Some(Progress::new(40, 600)));
/// # Ok(()) }
/// ```
pub struct StatusStore<T> {
    store: DynSyncStorage,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for StatusStore<T> {
    fn clone(&self) -> Self {
        StatusStore {
            store: self.store.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for StatusStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatusStore").field(&self.store).finish()
    }
}

/// The store of the ready [`SyncStatus`].
pub type SyncStatusStore = StatusStore<SyncStatus>;

fn encode<T: Serialize>(id: &str, status: &T) -> Result<Value> {
    serde_json::to_value(status).map_err(|source| Error::Serde {
        id: id.to_string(),
        source,
    })
}

fn decode<T: DeserializeOwned>(record: Record) -> Result<TypedRecord<T>> {
    let status = serde_json::from_value(record.status).map_err(|source| Error::Serde {
        id: record.id.clone(),
        source,
    })?;
    Ok(TypedRecord {
        id: record.id,
        version: record.version,
        created_at: record.created_at,
        updated_at: record.updated_at,
        expires_at: record.expires_at,
        status,
    })
}

impl<T: Serialize + DeserializeOwned + Send + 'static> StatusStore<T> {
    /// Wraps a store.
    pub fn new<S: SyncStorage>(store: S) -> Self {
        Self::from_dyn(Arc::new(store))
    }

    /// Wraps a shared store.
    pub fn from_dyn(store: DynSyncStorage) -> Self {
        StatusStore {
            store,
            _type: PhantomData,
        }
    }

    /// Opens a store by URL (see [`open`](crate::open)).
    pub async fn open(url: &str) -> Result<Self> {
        Ok(Self::from_dyn(crate::open(url).await?))
    }

    /// The untyped store underneath.
    pub fn storage(&self) -> &DynSyncStorage {
        &self.store
    }

    /// The current time by the store's clock.
    pub fn now(&self) -> Timestamp {
        self.store.clock().now()
    }

    /// The live record of `id`, if any.
    pub async fn get(&self, id: &str) -> Result<Option<TypedRecord<T>>> {
        self.store.get(id).await?.map(decode).transpose()
    }

    /// Writes `status` whatever is there.
    pub async fn put(&self, id: &str, status: &T) -> Result<TypedRecord<T>> {
        self.put_with(id, status, PutMode::Overwrite).await
    }

    /// Writes `status` only if `id` has no live record ([`Error::AlreadyExists`] otherwise).
    pub async fn create(&self, id: &str, status: &T) -> Result<TypedRecord<T>> {
        self.put_with(id, status, PutMode::Create).await
    }

    /// Writes `status` as `mode` allows.
    pub async fn put_with(&self, id: &str, status: &T, mode: PutMode) -> Result<TypedRecord<T>> {
        let value = encode(id, status)?;
        decode(self.store.put(id, value, mode).await?)
    }

    /// Read-modify-write that loses no update; `f` gets the current status (or `None`).
    pub async fn update<F>(&self, id: &str, mut f: F) -> Result<TypedRecord<T>>
    where
        F: FnMut(Option<T>) -> Result<T> + Send,
    {
        let id_owned = id.to_string();
        let record = self
            .store
            .update(id, &mut |current: Option<&Record>| {
                let current = current
                    .map(|record| {
                        serde_json::from_value::<T>(record.status.clone()).map_err(|source| {
                            Error::Serde {
                                id: id_owned.clone(),
                                source,
                            }
                        })
                    })
                    .transpose()?;
                encode(&id_owned, &f(current)?)
            })
            .await?;
        decode(record)
    }

    /// Removes `id`; returns whether a live record was removed.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        self.store.delete(id).await
    }

    /// The live records passing `filter`. Records that do not decode as `T` are returned as
    /// errors beside the others.
    pub async fn list(&self, filter: &ListFilter) -> Result<(Vec<TypedRecord<T>>, Vec<Error>)> {
        let listing = self.store.list(filter).await?;
        let mut records = Vec::with_capacity(listing.records.len());
        let mut errors = listing.errors;
        for record in listing.records {
            match decode(record) {
                Ok(record) => records.push(record),
                Err(error) => errors.push(error),
            }
        }
        Ok((records, errors))
    }
}
