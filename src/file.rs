//! Files the operator names (the config, certificates, keys, CA bundles), read the one safe way:
//! regular files only, never more than a bound. `/dev/zero` or `/dev/urandom` given as a key file
//! would otherwise be read until memory runs out, and a FIFO would block start-up (and
//! `check-config`) for as long as nobody writes to it: it is opened without blocking, and refused.

use std::io::Read;
use std::path::Path;

/// The most of a certificate, key or CA bundle read: far above any real one.
pub const MAX_PEM: u64 = 4 << 20;
/// The most of a config file read.
pub const MAX_CONFIG: u64 = 16 << 20;

/// Reads the regular file at `path`, at most `max` bytes (an error past it).
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO opened for reading blocks until a writer comes; without blocking it opens at once,
        // and is refused below.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        for device in ["/dev/zero", "/dev/urandom", "/dev/null", "/"] {
            if Path::new(device).exists() {
                assert!(read_bounded(Path::new(device), 1024).is_err(), "{device}");
            }
        }
        let dir = std::env::temp_dir().join(format!("mjgate-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(read_bounded(&big, 1024).is_err());
        assert_eq!(read_bounded(&big, 2048).unwrap().len(), 2048);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("mjgate-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert!(read_bounded(&fifo, 1024).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
