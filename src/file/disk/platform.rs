//! What differs between platforms in opening and comparing files.

#[cfg(unix)]
use std::fs;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use crate::error::Error;
use crate::error::Result;

/// The read file, kept open where that pins its identity (an inode number is not reused
/// while its file is open). Elsewhere the identity is its length and time, which an open
/// handle does not pin, and an open handle would make Windows refuse the rename that
/// replaces the file.
#[cfg(unix)]
pub(super) fn kept_open(file: File) -> Option<File> {
    Some(file)
}

#[cfg(not(unix))]
pub(super) fn kept_open(_file: File) -> Option<File> {
    None
}

/// `O_NOATIME` where the kernel has it, else no flag. Asked for on every read of a record:
/// with `relatime` (the default mount) the first read after every write would otherwise write
/// the inode back to the journal, which a cleanup paid for every expired record it judged
/// (370 of its 3,432 profile samples at 20,000 records; 5% fewer samples in all without it).
#[cfg(any(target_os = "linux", target_os = "android"))]
const NO_ATIME: libc::c_int = libc::O_NOATIME;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const NO_ATIME: libc::c_int = 0;

/// Opens a record file for reading without following a link, and without blocking in
/// `open` should the name be a FIFO (the caller then refuses anything but a regular file).
/// On Linux the access time is left alone ([`NO_ATIME`]); the kernel allows that only to the
/// file's owner, so a record of another user is opened again without it.
pub(super) fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        const FLAGS: libc::c_int = libc::O_NOFOLLOW | libc::O_NONBLOCK;
        options.custom_flags(FLAGS | NO_ATIME);
        match options.open(path) {
            Err(error) if NO_ATIME != 0 && error.raw_os_error() == Some(libc::EPERM) => {
                options.custom_flags(FLAGS);
            }
            opened => return opened,
        }
    }
    // A write keeps the file it read open until its rename has replaced it: without
    // FILE_SHARE_DELETE, Windows refuses to replace a file that is open (access denied).
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// `FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE`.
        pub(super) const SHARE_ALL: u32 = 0x1 | 0x2 | 0x4;
        options.share_mode(SHARE_ALL);
    }
    options.open(path)
}

#[cfg(unix)]
pub(super) fn no_follow(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW);
}

#[cfg(not(unix))]
pub(super) fn no_follow(_options: &mut OpenOptions) {}

pub(super) fn symlink_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "is a symbolic link; the store never follows links",
    )
}

/// Turns the `ELOOP` of `O_NOFOLLOW` into an error that says what happened.
pub(super) fn symlink_aware(error: io::Error) -> io::Error {
    #[cfg(unix)]
    if error.raw_os_error() == Some(libc::ELOOP) {
        return symlink_error();
    }
    error
}

#[cfg(unix)]
pub(super) fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
pub(super) fn is_same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(unix)]
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
pub(super) fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}
