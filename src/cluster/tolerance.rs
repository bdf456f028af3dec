//! How far apart nodes may be in a rebalance ([`Tolerance`]): the planner's
//! (`migrate::rebalance`) and the automatic rebalance's setting (`[cluster]
//! auto_rebalance_tolerance`), so it is defined with the cluster settings.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How far apart nodes may be: a number of users (and of sessions per network), or a
/// percentage of the mean per node. Always at least 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    Count(u32),
    Percent(f64),
}

impl Tolerance {
    /// The difference allowed between the fullest and the emptiest node, for a mean of
    /// `mean` per node.
    pub fn allowance(self, mean: f64) -> i64 {
        match self {
            Tolerance::Count(n) => i64::from(n.max(1)),
            Tolerance::Percent(p) => ((mean * p / 100.0).ceil() as i64).max(1),
        }
    }
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance::Percent(10.0)
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Count(n) => write!(f, "{n}"),
            Tolerance::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// As the operator writes it (`2`, `10%`).
impl Serialize for Tolerance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Tolerance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a tolerance: give a count (2) or a percentage (10%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p.is_finite() && p >= 0.0) {
                return Err(bad());
            }
            Ok(Tolerance::Percent(p))
        } else {
            Ok(Tolerance::Count(s.parse().map_err(|_| bad())?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_parses_counts_and_percentages() {
        assert_eq!("3".parse::<Tolerance>(), Ok(Tolerance::Count(3)));
        assert_eq!("10%".parse::<Tolerance>(), Ok(Tolerance::Percent(10.0)));
        assert!("ten".parse::<Tolerance>().is_err());
        assert!("-5%".parse::<Tolerance>().is_err());
        // At least one: two nodes can always differ by one user.
        assert_eq!(Tolerance::Count(0).allowance(100.0), 1);
        assert_eq!(Tolerance::Percent(10.0).allowance(4.0), 1);
        assert_eq!(Tolerance::Percent(10.0).allowance(45.0), 5);
    }
}
