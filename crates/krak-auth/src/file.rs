//! The rack secret on disk: 64 hex digits and a newline, in a file only its owner may read.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{ParseSecretError, RackSecret};

/// Largest secret file read: a hex secret and some whitespace.
const MAX_FILE_BYTES: u64 = 4096;

/// Why a secret file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("rack secret file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "rack secret file {path} is readable or writable by group or others (mode {mode:o}); \
         run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("rack secret file {path} is {len} bytes: not a rack secret")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("rack secret file {path}: {source}")]
    Parse { path: PathBuf, source: ParseSecretError },
    #[error("rack secret file {path} holds the all-zero key; make a real one with `krak secret new`")]
    Insecure { path: PathBuf },
}

/// Reads a secret written by [`write_new_secret_file`] (or by hand: 64 hex digits).
/// Refuses a file that group or others may read or write.
pub fn load_secret_file(path: &Path) -> Result<RackSecret, SecretFileError> {
    let io = |source| SecretFileError::Io { path: path.to_owned(), source };
    let meta = fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen { path: path.to_owned(), mode });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SecretFileError::TooLarge { path: path.to_owned(), len: meta.len() });
    }
    let text = fs::read_to_string(path).map_err(io)?;
    let secret =
        RackSecret::from_hex(&text).map_err(|source| SecretFileError::Parse { path: path.to_owned(), source })?;
    if secret.is_insecure() {
        return Err(SecretFileError::Insecure { path: path.to_owned() });
    }
    Ok(secret)
}

/// Writes a fresh secret to a new file with mode 0600; never overwrites an existing file.
pub fn write_new_secret_file(path: &Path) -> Result<RackSecret, SecretFileError> {
    let io = |source| SecretFileError::Io { path: path.to_owned(), source };
    let secret = RackSecret::generate();
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    // The umask may only clear bits, but be explicit about the mode that matters.
    f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)?;
    writeln!(f, "{}", secret.to_hex()).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("krak-auth-test-{}-{}", std::process::id(), rand::random::<u64>()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn written_secret_loads_back_and_is_private() {
        let d = dir();
        let path = d.join("secret");
        let s = write_new_secret_file(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_secret_file(&path).unwrap(), s);
        assert!(matches!(write_new_secret_file(&path), Err(SecretFileError::Io { .. })), "never overwrites");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn refuses_open_files_garbage_and_the_zero_key() {
        let d = dir();
        let path = d.join("secret");
        write_new_secret_file(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_secret_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");

        let bad = d.join("bad");
        fs::write(&bad, "not hex").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load_secret_file(&bad), Err(SecretFileError::Parse { .. })));
        fs::write(&bad, "0".repeat(64)).unwrap();
        assert!(matches!(load_secret_file(&bad), Err(SecretFileError::Insecure { .. })));
        assert!(matches!(load_secret_file(&d.join("missing")), Err(SecretFileError::Io { .. })));
        fs::remove_dir_all(d).unwrap();
    }
}
