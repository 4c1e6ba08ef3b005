//! What the operating system says about who runs absync.

/// The real user id of this process (from /proc/self/status).
pub fn current_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
}

/// The name /etc/passwd gives a user id, or `uid N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The Unix user running absync: the one who ran `sudo`, if any, else the
/// owner of this process as /etc/passwd names it.
pub fn unix_user() -> String {
    if let Ok(u) = std::env::var("SUDO_USER") {
        return u;
    }
    match current_uid() {
        Some(uid) => user_name(uid),
        None => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    }
}
