//! The file-descriptor budget: RLIMIT_NOFILE raised to the hard limit at start.

use tracing::{info, warn};

/// What this node can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// RLIMIT_NOFILE (soft) after raising it.
    pub limit: u64,
    /// Descriptors kept for everything that is not an upstream session: listeners, the
    /// database pool, log files, downstream clients.
    pub reserve: u64,
}

impl FdBudget {
    /// Upstream sessions this node accepts.
    pub fn sessions(&self) -> u64 {
        self.limit.saturating_sub(self.reserve)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and logs the result loudly.
pub fn raise_nofile() -> FdBudget {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let limit = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            warn!("could not read RLIMIT_NOFILE; assuming 1024 file descriptors");
            1024
        } else {
            let before = rl.rlim_cur;
            if rl.rlim_cur < rl.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: rl.rlim_max,
                    rlim_max: rl.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    rl.rlim_cur = rl.rlim_max;
                } else {
                    warn!(
                        soft = before,
                        hard = rl.rlim_max,
                        "could not raise RLIMIT_NOFILE"
                    );
                }
            }
            rl.rlim_cur
        }
    };
    let reserve = reserve_for(limit);
    let budget = FdBudget { limit, reserve };
    info!(
        fd_limit = limit,
        fd_reserve = reserve,
        session_budget = budget.sessions(),
        "file descriptors: RLIMIT_NOFILE raised to the hard limit; this node refuses upstream sessions beyond its budget"
    );
    budget
}

/// A tenth of the limit, at least 64 and at most 4096.
fn reserve_for(limit: u64) -> u64 {
    (limit / 10).clamp(64, 4096).min(limit)
}

/// How many descriptors the process has open now (Linux; `None` elsewhere).
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_leaves_a_reserve() {
        let b = raise_nofile();
        assert!(b.limit >= 64);
        assert!(b.sessions() < b.limit);
        assert_eq!(reserve_for(1024), 102);
        assert_eq!(reserve_for(100), 64);
        assert_eq!(reserve_for(1_048_576), 4096);
        assert!(open_fds().unwrap() > 0);
    }
}
