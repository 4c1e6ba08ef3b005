//! Passwords: read only from files, never printed.
//!
//! [`Secret`] has no `Display`, and its `Debug` prints a placeholder, so a
//! password cannot reach a log line, an error message or the journal by
//! accident. Its memory is overwritten with zeros when it is dropped
//! (`zeroize`), and it cannot be cloned: there is one copy of each password
//! in the process, where the configuration holds it.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A password held in memory. Its `Debug` output is redacted, its bytes
/// are zeroed on drop, and it is deliberately not `Clone`.
#[derive(PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Takes the value over; a `String` is moved in without a copy.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The password itself, borrowed, for the one place that needs it: the
    /// bind. Pass it on as `&str`; never copy it into a `String`.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Zeroize for Secret {
    /// Overwrites the whole buffer (its capacity, not only its length) with
    /// zeros and empties it.
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password file {path} is empty")]
    Empty { path: PathBuf },
}

/// Reads a password file. One trailing newline is ignored (editors add one).
/// Returns the secret and, when the file is readable by group or others, a
/// warning for the caller to log.
pub fn read_password_file(path: &Path) -> Result<(Secret, Option<String>), SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Zeroed on drop: the file's text holds the password too.
    let raw = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read_err)?);
    let value = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if value.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    let warning = loose_permissions(path);
    Ok((Secret::new(value), warning))
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password file {} has mode {:04o}; expected 0600 (readable by its owner only)",
            path.display(),
            mode
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn zeroize_overwrites_the_whole_buffer_and_drop_does_it() {
        // The type promises zeroing on drop (checked by the compiler
        // through the marker trait) ...
        fn zeroed_on_drop<T: ZeroizeOnDrop>() {}
        zeroed_on_drop::<Secret>();
        // ... and its Drop is `zeroize`, which leaves every byte of the
        // buffer zero. Looked at through the live allocation (reading
        // freed memory would be undefined behaviour).
        let mut s = Secret::new(String::with_capacity(32) + "hunter2");
        let (ptr, cap) = (s.0.as_ptr(), s.0.capacity());
        s.zeroize();
        assert_eq!(s.expose(), "");
        assert_eq!(s.0.as_ptr(), ptr, "zeroize keeps the allocation");
        // SAFETY: `ptr` is the still-live allocation of `s.0`, `cap` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, cap) };
        assert!(bytes.iter().all(|&b| b == 0), "{bytes:?}");
    }

    #[test]
    fn reads_file_strips_one_newline_and_warns_on_loose_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("absync-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "pa ss\n\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (s, warn) = read_password_file(&f).unwrap();
        assert_eq!(s.expose(), "pa ss\n");
        assert!(warn.unwrap().contains("0644"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_password_file(&f).unwrap().1.is_none());
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            read_password_file(&f),
            Err(SecretError::Empty { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
