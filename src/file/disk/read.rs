//! Reading record files, and knowing later which file was read.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
#[cfg(not(unix))]
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};

use super::Layout;
use super::platform::{kept_open, open_no_follow, symlink_aware};
use crate::file::format::{self, Head};

/// A record file opened for reading, and what has been read of it.
#[derive(Debug)]
pub(crate) struct OpenRecord {
    path: PathBuf,
    file: File,
    metadata: fs::Metadata,
    bytes: Vec<u8>,
}

impl OpenRecord {
    /// The length of the file when it was opened, in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.metadata.len()
    }

    fn into_read_file(self) -> ReadFile {
        ReadFile {
            key: FileId::of(&self.metadata),
            _open: kept_open(self.file),
        }
    }
}

/// Which file a name pointed at when it was read, to tell later whether it was replaced.
///
/// It keeps the file open: an inode number is unique only while its file exists, and a file
/// replaced and closed frees its number for the next file made (a staging file of another
/// writer, renamed over the record in turn), which would look unchanged.
#[derive(Debug)]
pub(crate) struct ReadFile {
    pub(super) key: FileId,
    _open: Option<File>,
}

impl ReadFile {
    /// The file at `path` now, kept open, or `None` when there is none.
    pub(crate) fn at(path: &Path) -> io::Result<Option<Self>> {
        let file = match open_no_follow(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A link or something else not openable as a file: known by its metadata alone.
            Err(_) => {
                return Ok(FileId::at(path)?.map(|key| ReadFile { key, _open: None }));
            }
        };
        let key = FileId::of(&file.metadata()?);
        Ok(Some(ReadFile {
            key,
            _open: kept_open(file),
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(not(unix))]
    len: u64,
    #[cfg(not(unix))]
    modified: Option<SystemTime>,
}

impl FileId {
    pub(super) fn of(metadata: &fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: metadata.dev(),
                ino: metadata.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            FileId {
                len: metadata.len(),
                modified: metadata.modified().ok(),
            }
        }
    }

    /// What `path` names now (`None`: nothing).
    pub(super) fn at(path: &Path) -> io::Result<Option<Self>> {
        match fs::symlink_metadata(path) {
            Ok(metadata) => Ok(Some(FileId::of(&metadata))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

impl Layout {
    /// Opens the record file of `id` for reading: `None` when there is none. Only regular
    /// files within the size limit are records.
    pub(crate) fn open_record(&self, id: &str) -> Result<Option<OpenRecord>> {
        let path = self.record_path(id);
        let file = match open_no_follow(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io(&path, symlink_aware(error))),
        };
        // A FIFO or device in place of a record would block or never end.
        let metadata = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !metadata.is_file() {
            return Err(Error::io(
                &path,
                io::Error::new(io::ErrorKind::InvalidInput, "is not a regular file"),
            ));
        }
        // Refused before a byte is read: an oversize file must not cost its size in memory.
        crate::storage::check_record_size(id, metadata.len(), self.max_record_size)?;
        Ok(Some(OpenRecord {
            path,
            file,
            metadata,
            bytes: Vec::new(),
        }))
    }

    /// Reads the rest of `open` and parses the whole record.
    pub(crate) fn finish_read(&self, id: &str, mut open: OpenRecord) -> Result<(Record, ReadFile)> {
        // Sized from the metadata already at hand (`read_to_end` on a `File` would ask the
        // kernel for it again); one byte more so the end is seen in the same pass. The read
        // stops one byte past the limit should the file grow meanwhile.
        let expected = usize::try_from(open.metadata.len()).unwrap_or(0);
        open.bytes.reserve(
            expected
                .saturating_add(1)
                .max(512)
                .saturating_sub(open.bytes.len()),
        );
        let already = open.bytes.len() as u64;
        (&mut open.file)
            .take(
                self.max_record_size
                    .saturating_add(1)
                    .saturating_sub(already),
            )
            .read_to_end(&mut open.bytes)
            .map_err(|e| Error::io(&open.path, e))?;
        crate::storage::check_record_size(id, open.bytes.len() as u64, self.max_record_size)?;
        let metadata = &open.metadata;
        let record = format::parse_record(id, &open.path, &open.bytes, &self.ttl, || {
            metadata
                .modified()
                .map(Timestamp::from_system_time)
                .unwrap_or_default()
        })?;
        Ok((record, open.into_read_file()))
    }

    /// Reads the record of `id`, and which file it was read from. `Ok((None, None))` when
    /// there is no file.
    pub(crate) fn read_with_id(&self, id: &str) -> Result<(Option<Record>, Option<ReadFile>)> {
        let Some(open) = self.open_record(id)? else {
            return Ok((None, None));
        };
        let (record, read) = self.finish_read(id, open)?;
        Ok((Some(record), Some(read)))
    }

    /// Reads the head of the record of `id` (all but its status), and which file it was read
    /// from. Only the first bytes of the file are read when they hold the head (see
    /// [`format`]); otherwise the whole record is.
    pub(crate) fn read_head_with_id(&self, id: &str) -> Result<(Option<Head>, Option<ReadFile>)> {
        let Some(mut open) = self.open_record(id)? else {
            return Ok((None, None));
        };
        // No more than the file's size, so that a small file costs one `read`, not a second
        // one to see its end. (Should it have grown since, the head may be cut short; then
        // the whole file is read below.)
        let prefix = open.metadata.len().min(format::HEAD_PREFIX as u64);
        open.bytes.reserve(format::HEAD_PREFIX);
        (&mut open.file)
            .take(prefix)
            .read_to_end(&mut open.bytes)
            .map_err(|e| Error::io(&open.path, e))?;
        if let Some(head) = format::parse_head(id, &open.bytes) {
            return Ok((Some(head), Some(open.into_read_file())));
        }
        let (record, read) = self.finish_read(id, open)?;
        Ok((Some(Head::of(&record)), Some(read)))
    }

    /// Reads the record of `id`. `Ok(None)` when there is no file.
    pub(crate) fn read(&self, id: &str) -> Result<Option<Record>> {
        Ok(self.read_with_id(id)?.0)
    }
}
