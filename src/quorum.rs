//! Quorum arithmetic, in one place.
//!
//! Every count here is over the *configured* members, never over the members currently visible:
//! a partition that sees three of its own out of seven members must not conclude that three is a
//! majority. The tables in `testdata/quorum.txt` pin the numbers operators will read in docs.

/// Strict majority of `n` configured members: `floor(n/2) + 1`. Any two sets of this size
/// intersect, which is what makes a quorum certificate unique per promise.
pub const fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Default storm threshold: the largest number of members that may be down or unhealthy at once
/// while fencing still proceeds. One third of the cluster (at least one): with five hosts a second
/// simultaneous failure already looks like a common cause and stops fencing.
pub const fn default_max_unhealthy(n: usize) -> usize {
    let third = n / 3;
    if third == 0 { 1 } else { third }
}

/// Whether `count` distinct members make a quorum of `n`.
pub const fn is_quorum(count: usize, n: usize) -> bool {
    count >= quorum(n)
}

/// Whether two quorums of `n` must share a member (true for every `n >= 1`; kept as a checked
/// statement of the property the agreement relies on).
pub const fn quorums_intersect(n: usize) -> bool {
    2 * quorum(n) > n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Rows of `n quorum max_unhealthy` from testdata/quorum.txt.
    #[test]
    fn table() {
        let table = include_str!("testdata/quorum.txt");
        let mut rows = 0;
        for line in table.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<usize> = line
                .split_whitespace()
                .map(|c| c.parse().expect("numeric column"))
                .collect();
            assert_eq!(cols.len(), 3, "row {line:?}");
            let (n, q, max_unhealthy) = (cols[0], cols[1], cols[2]);
            assert_eq!(quorum(n), q, "quorum({n})");
            assert_eq!(
                default_max_unhealthy(n),
                max_unhealthy,
                "default_max_unhealthy({n})"
            );
            rows += 1;
        }
        assert!(rows >= 10);
    }

    proptest! {
        #[test]
        fn two_quorums_always_share_a_member(n in 1usize..=128) {
            prop_assert!(quorums_intersect(n));
            prop_assert!(quorum(n) <= n);
            // A minority can never be a quorum.
            prop_assert!(!is_quorum(n - quorum(n), n));
        }

        #[test]
        fn storm_threshold_leaves_a_quorum_standing(n in 3usize..=128) {
            // If at most max_unhealthy members are down, the rest still form a quorum, so the
            // storm rule never blocks a cluster that could otherwise decide.
            prop_assert!(is_quorum(n - default_max_unhealthy(n), n));
        }

        #[test]
        fn forty_percent_failing_is_a_storm(n in 3usize..=128) {
            let failing = (2 * n).div_ceil(5);
            prop_assert!(failing > default_max_unhealthy(n));
        }
    }
}
