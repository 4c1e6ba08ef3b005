//! Passwords: read only from files, never printed.
//!
//! [`Secret`] has no `Display`, and its `Debug` prints a placeholder, so a
//! password cannot reach a log line, an error message or the journal by
//! accident.

use std::fmt;
use std::path::{Path, PathBuf};

/// A password held in memory. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The password itself, for the one place that needs it: the bind.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

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
    let raw = std::fs::read_to_string(path).map_err(read_err)?;
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
