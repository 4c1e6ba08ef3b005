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
    #[error(
        "password file {path} is larger than {MAX_PASSWORD_FILE} bytes: it holds one password \
         on one line"
    )]
    TooLarge { path: PathBuf },
    #[error("password file {path} is not a regular file: give the file holding the password")]
    NotAFile { path: PathBuf },
    #[error(
        "password file {path} is a symbolic link, which absync does not follow: give the file \
         itself"
    )]
    Symlink { path: PathBuf },
    #[error(
        "password file {path} belongs to {owner}, not to {allowed}: absync reads no password \
         another user could have written"
    )]
    Owner {
        path: PathBuf,
        owner: String,
        /// "root", or "alice (who runs absync) or root"
        allowed: String,
    },
}

/// The largest password file absync reads. A bind password is one line
/// (Active Directory takes at most 256 characters, under 1 KiB in UTF-8);
/// anything larger is a mistake or an attack (`/dev/zero`), and is not read
/// past this.
pub const MAX_PASSWORD_FILE: u64 = 4096;

/// Reads a password file. One trailing newline is ignored (editors add one).
/// Returns the secret and, when the file is readable by group or others, a
/// warning for the caller to log.
///
/// The file is opened without following a symlink (`O_NOFOLLOW`) or waiting
/// on a FIFO (`O_NONBLOCK`), and must be a regular file of at most
/// [`MAX_PASSWORD_FILE`] bytes belonging to the user running absync or to
/// root. (systemd's credentials, `$CREDENTIALS_DIRECTORY/NAME`, are regular
/// files belonging to root, readable by the service's user through an ACL,
/// or to that user where ACLs are not supported.) Errors name the path,
/// never the content.
pub fn read_password_file(path: &Path) -> Result<(Secret, Option<String>), SecretError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path_buf = || path.to_path_buf();
    let read_err = |source| SecretError::Read {
        path: path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => SecretError::Symlink { path: path_buf() },
            _ => read_err(e),
        })?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: path_buf() });
    }
    let me = crate::os::current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(SecretError::Owner {
            path: path_buf(),
            owner: crate::os::user_name(meta.uid()),
            allowed: match me {
                0 => "root".into(),
                me => format!("{} (who runs absync) or root", crate::os::user_name(me)),
            },
        });
    }
    // The size is checked before the read, and the read stops past the
    // limit all the same (a file that grows).
    if meta.len() > MAX_PASSWORD_FILE {
        return Err(SecretError::TooLarge { path: path_buf() });
    }
    // Zeroed on drop: the file's text holds the password too. Sized for
    // the largest read up front, so no growth leaves a copy behind.
    let mut raw = zeroize::Zeroizing::new(String::with_capacity(MAX_PASSWORD_FILE as usize + 1));
    file.take(MAX_PASSWORD_FILE + 1)
        .read_to_string(&mut raw)
        .map_err(read_err)?;
    if raw.len() as u64 > MAX_PASSWORD_FILE {
        return Err(SecretError::TooLarge { path: path_buf() });
    }
    let value = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if value.is_empty() {
        return Err(SecretError::Empty { path: path_buf() });
    }
    let warning = loose_permissions(path, &meta);
    Ok((Secret::new(value), warning))
}

fn loose_permissions(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password file {} has mode {:04o}; expected 0600 (readable by its owner only)",
            path.display(),
            mode
        )
    })
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

    /// The error's text: it names the path and never the content.
    fn refused(path: &Path, content: &str) -> String {
        let e = read_password_file(path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(content.is_empty() || !e.contains(content), "{e}");
        e
    }

    #[test]
    fn a_huge_file_a_device_a_fifo_or_a_link_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than 4 KiB: refused from its size, even sparse and huge.
        let big = dir.path().join("big.pw");
        std::fs::write(&big, "hunter2-secret".repeat(300)).unwrap();
        assert!(refused(&big, "hunter2-secret").contains("larger than 4096 bytes"));
        std::fs::File::create(&big)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let t = std::time::Instant::now();
        refused(&big, "");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Exactly 4 KiB is a password (with its newline).
        let max = dir.path().join("max.pw");
        std::fs::write(&max, format!("{}\n", "p".repeat(4095))).unwrap();
        assert_eq!(read_password_file(&max).unwrap().0.expose().len(), 4095);
        // /dev/zero (a character device) and a FIFO nobody writes to: not
        // read, not waited on.
        let e = refused(Path::new("/dev/zero"), "");
        assert!(e.contains("is not a regular file"), "{e}");
        let fifo = dir.path().join("fifo.pw");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(refused(&fifo, "").contains("is not a regular file"));
        // A symlink, even to a good password file.
        let good = dir.path().join("good.pw");
        std::fs::write(&good, "hunter2-secret\n").unwrap();
        let link = dir.path().join("link.pw");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(refused(&link, "hunter2-secret").contains("is a symbolic link"));
        assert!(refused(&link, "hunter2-secret").contains("give the file itself"));
        assert_eq!(
            read_password_file(&good).unwrap().0.expose(),
            "hunter2-secret"
        );
    }

    #[test]
    fn a_password_file_of_another_user_is_refused() {
        if crate::os::current_uid() != 0 {
            return; // chown needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("theirs.pw");
        std::fs::write(&f, "hunter2-secret\n").unwrap();
        std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
        let e = refused(&f, "hunter2-secret");
        assert_eq!(
            e,
            format!(
                "password file {} belongs to {}, not to root: absync reads no password \
                 another user could have written",
                f.display(),
                crate::os::user_name(65534)
            )
        );
    }
}
