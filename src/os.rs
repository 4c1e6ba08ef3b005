//! What the operating system says about who runs absync: the real user id
//! and the kernel's login uid, named through NSS (so domain users from SSSD
//! or winbind have their names too). No environment variable is consulted:
//! `SUDO_USER`, `USER` and `LOGNAME` are whatever the caller set.

use std::fmt;

use nix::unistd::{Uid, User};

/// The kernel's login uid for "no login" (a service started by systemd, a
/// boot script): `(uid_t)-1`, as auditd prints it.
pub const LOGIN_UID_UNSET: u32 = u32::MAX;

/// The real user id of this process.
pub fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The name NSS gives a user id (`/etc/passwd`, SSSD, winbind, ... as
/// nsswitch.conf says), or `uid N` when it has none.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// A process's login uid from `/proc/PID/loginuid` (`self` for this one):
/// set once when a person logs in (pam_loginuid) and kept across `sudo`
/// and `su`. `None` when it cannot be read (no /proc, or the process is
/// hidden from us).
fn login_uid(pid: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/loginuid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Who did something, as the journal records it: the real uid and the
/// login uid as the kernel reports them, and the text naming them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub uid: u32,
    /// [`LOGIN_UID_UNSET`] when there is no login; `None` when it could
    /// not be read.
    pub login_uid: Option<u32>,
    /// "alice", "root (login alice)", "absync", "uid 1234", ...
    pub text: String,
}

impl Who {
    /// The user running this process.
    pub fn me() -> Who {
        Who::of(current_uid(), login_uid("self"))
    }

    /// The process at the other end of a socket, from its peer
    /// credentials: the uid the kernel gives, and the login uid of its
    /// process. Read at once: the pid names the peer only while it lives.
    pub fn peer(uid: u32, pid: Option<i32>) -> Who {
        Who::of(uid, pid.and_then(|p| login_uid(&p.to_string())))
    }

    /// A uid and login uid, named through NSS.
    pub fn of(uid: u32, login_uid: Option<u32>) -> Who {
        Who {
            uid,
            login_uid,
            text: describe(uid, login_uid, user_name),
        }
    }

    /// The numbers, for a journal record's detail:
    /// `{"uid":0,"login_uid":1000}` (4294967295 for no login, null when it
    /// could not be read).
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({ "uid": self.uid, "login_uid": self.login_uid })
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The journal's wording: the user's name, followed by the login's when
/// someone logged in as another user (`root (login alice)` after `sudo`),
/// or `(login unknown)` when the login uid could not be read.
pub fn describe(uid: u32, login_uid: Option<u32>, name: impl Fn(u32) -> String) -> String {
    match login_uid {
        None => format!("{} (login unknown)", name(uid)),
        Some(l) if l != LOGIN_UID_UNSET && l != uid => {
            format!("{} (login {})", name(uid), name(l))
        }
        Some(_) => name(uid),
    }
}

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core
/// dump holds its memory (the passwords), users other than root cannot
/// attach a debugger to it or read its `/proc/PID/mem` and `environ` (its
/// `/proc/PID` files belong to root). Called first thing by the binary.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)
}

/// Whether this process may be dumped (`PR_GET_DUMPABLE`).
pub fn dumpable() -> std::io::Result<bool> {
    nix::sys::prctl::get_dumpable().map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_forbid_core_dumps_the_process_is_not_dumpable() {
        // A forked child, so the test harness itself stays dumpable.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = dumpable().unwrap() && forbid_core_dumps().is_ok() && !dumpable().unwrap();
                unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    fn names(uid: u32) -> String {
        match uid {
            0 => "root".into(),
            998 => "absync".into(),
            1000 => "alice".into(),
            n => format!("uid {n}"),
        }
    }

    #[test]
    fn the_wording_names_the_user_and_a_different_login() {
        assert_eq!(describe(0, Some(1000), names), "root (login alice)");
        assert_eq!(describe(998, Some(LOGIN_UID_UNSET), names), "absync");
        assert_eq!(describe(1000, Some(1000), names), "alice");
        assert_eq!(describe(1234, Some(1234), names), "uid 1234");
        assert_eq!(describe(0, Some(1234), names), "root (login uid 1234)");
        assert_eq!(describe(0, None, names), "root (login unknown)");
    }

    #[test]
    fn nss_names_root_and_not_an_unknown_uid() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(3_999_999_999), "uid 3999999999");
    }

    #[test]
    fn a_vanished_peer_has_no_known_login() {
        let who = Who::of(0, None);
        assert_eq!(
            who.detail(),
            serde_json::json!({"uid": 0, "login_uid": null})
        );
        // Pids are below 2^22 on Linux: this one names no process.
        assert_eq!(Who::peer(0, Some(i32::MAX)).login_uid, None);
    }
}
