//! File descriptors: at start the soft `RLIMIT_NOFILE` goes up to the hard
//! limit, and a limit still below what the config needs is warned about
//! with the fix. (The accept loop counts and warns about running out.)

use crate::config::Config;
use crate::listener::{descriptors_needed as needed, DESCRIPTOR_MARGIN as MARGIN};
use crate::metrics::open_files_limit;

/// The start-up warning when the limit (`soft`, after raising it to `hard`)
/// is below `need`; None when it is enough.
pub(super) fn warning(soft: u64, hard: u64, need: u64, max_connections: usize) -> Option<String> {
    if soft >= need {
        return None;
    }
    let hard = if hard > soft { format!(" (hard limit {hard}, not reached)") } else { String::new() };
    Some(format!(
        "file descriptor limit {soft}{hard} is below the {need} that max-connections = {max_connections} needs \
         (one per connection, three times as many but at least 64 for pending request heads, 64 for answering past those, {MARGIN} for the broker link and the rest); \
         past it new connections wait in the listen backlog. \
         Raise it: LimitNOFILE={need} in the unit (systemctl edit edgepush), or ulimit -n {need} in the shell that starts edgepush"
    ))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft, hard)
/// as they are afterwards, None when the limit cannot be read.
pub(super) fn raise_to_hard() -> Option<(u64, u64)> {
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit(2) and setrlimit(2) with a valid struct; raising
        // the soft limit up to the hard one needs no privilege.
        let raised = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0
            }
        };
        if !raised {
            log::debug!("cannot raise the file descriptor limit {soft} to {hard}: {}", std::io::Error::last_os_error());
        }
    }
    open_files_limit()
}

/// At start: raises the limit, and warns when it is below what `cfg` needs.
pub(super) fn check(cfg: &Config) {
    let Some((soft, hard)) = raise_to_hard() else { return };
    let need = needed(&cfg.limits);
    match warning(soft, hard, need, cfg.limits.max_connections) {
        Some(w) => log::warn!("{w}"),
        None => log::debug!("file descriptor limit {soft}, {need} needed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_is_connections_plus_pending_heads_plus_a_margin() {
        let need = |max| {
            let mut l = Config::default().limits;
            l.max_connections = max;
            needed(&l)
        };
        assert_eq!(need(1), 1 + 64 + 64 + 64);
        assert_eq!(need(64), 64 + 192 + 64 + 64);
        assert_eq!(need(1000), 4128);
        // The board profiles' `LimitNOFILE=` (README "Install and operate") cover them.
        for (max, limit) in [(1024, 8192), (3072, 16384), (512, 4096), (256, 2048)] {
            assert!(need(max) <= limit, "{max}: {} > {limit}", need(max));
        }
        let cfg = Config::from_toml("", "test", None).unwrap();
        assert!(needed(&cfg.limits) <= 8192, "the unit's LimitNOFILE=8192");
    }

    #[test]
    fn the_warning_names_the_limit_the_need_and_the_fix() {
        assert_eq!(warning(2064, 2064, 2064, 1000), None);
        assert_eq!(warning(4096, 4096, 2064, 1000), None);
        let w = warning(128, 128, 2064, 1000).unwrap();
        for part in ["limit 128 ", "the 2064 ", "max-connections = 1000", "LimitNOFILE=2064", "ulimit -n 2064"] {
            assert!(w.contains(part), "{part:?} in {w}");
        }
        assert!(!w.contains("hard"), "{w}");
        assert!(!w.contains("accept"), "the accept loop's warning is counted apart: {w}");
        assert!(warning(1024, 1500, 2064, 1000).unwrap().contains("(hard limit 1500, not reached)"));
    }

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let (soft, hard) = raise_to_hard().unwrap();
        assert_eq!(soft, hard);
    }
}
