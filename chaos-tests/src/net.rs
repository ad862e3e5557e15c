//! The simulated network: per-direction blocking (full and asymmetric partitions), random loss,
//! duplication and delay (which reorders). Every draw comes from the world's seeded generator.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Network fault parameters.
#[derive(Debug, Clone)]
pub struct NetParams {
    /// Datagram loss, percent.
    pub loss_pct: u32,
    /// Datagram duplication, percent.
    pub dup_pct: u32,
    /// One-way delay, microseconds: base.
    pub delay_base_us: u64,
    /// Plus a uniform jitter up to this (jitter reorders packets).
    pub delay_jitter_us: u64,
    /// Reliable messages lost outright, percent: the connection broke under them (QUIC's idle
    /// timeout under heavy loss, a reset), so the transport never retransmits them.
    pub reliable_drop_pct: u32,
}

impl Default for NetParams {
    fn default() -> Self {
        Self {
            loss_pct: 0,
            dup_pct: 0,
            delay_base_us: 200,
            delay_jitter_us: 800,
            reliable_drop_pct: 0,
        }
    }
}

/// Links between hosts.
#[derive(Debug, Clone)]
pub struct Network {
    n: usize,
    /// `blocked[from * n + to]`: nothing gets from `from` to `to`.
    blocked: Vec<bool>,
    /// Current parameters.
    pub params: NetParams,
    /// When the set of blocked links last changed (true time, µs).
    pub changed_at: u64,
}

impl Network {
    /// A fully connected network.
    pub fn new(n: usize, params: NetParams) -> Self {
        Self {
            n,
            blocked: vec![false; n * n],
            params,
            changed_at: 0,
        }
    }

    /// Whether `from` can reach `to` now.
    pub fn open(&self, from: usize, to: usize) -> bool {
        !self.blocked[from * self.n + to]
    }

    /// Blocks or unblocks one direction.
    pub fn set_link(&mut self, from: usize, to: usize, blocked: bool, now: u64) {
        if self.blocked[from * self.n + to] != blocked {
            self.blocked[from * self.n + to] = blocked;
            self.changed_at = now;
        }
    }

    /// Splits hosts into groups that cannot talk to each other (hosts not listed keep their
    /// links to everyone).
    pub fn partition(&mut self, groups: &[Vec<usize>], now: u64) {
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi != gj {
                    for &x in a {
                        for &y in b {
                            self.set_link(x, y, true, now);
                        }
                    }
                }
            }
        }
    }

    /// Cuts every link of `host`, both directions.
    pub fn isolate(&mut self, host: usize, now: u64) {
        for other in 0..self.n {
            if other != host {
                self.set_link(host, other, true, now);
                self.set_link(other, host, true, now);
            }
        }
    }

    /// Opens every link.
    pub fn heal(&mut self, now: u64) {
        for i in 0..self.n * self.n {
            if self.blocked[i] {
                self.blocked[i] = false;
                self.changed_at = now;
            }
        }
    }

    /// Delivery delays for one message (empty: lost). Reliable messages are never lost or
    /// duplicated at random (the transport retransmits), but are slowed by loss.
    pub fn delays(&self, from: usize, to: usize, reliable: bool, rng: &mut ChaCha8Rng) -> Vec<u64> {
        if !self.open(from, to) {
            return Vec::new();
        }
        let p = &self.params;
        let one = |rng: &mut ChaCha8Rng| p.delay_base_us + rng.random_range(0..=p.delay_jitter_us);
        if reliable {
            if p.reliable_drop_pct > 0 && rng.random_range(0..100) < p.reliable_drop_pct {
                return Vec::new();
            }
            let mut d = one(rng);
            // Each loss costs a retransmission timeout of ~200 ms.
            while p.loss_pct > 0 && rng.random_range(0..100) < p.loss_pct {
                d += 200_000;
            }
            return vec![d];
        }
        if p.loss_pct > 0 && rng.random_range(0..100) < p.loss_pct {
            return Vec::new();
        }
        let mut out = vec![one(rng)];
        if p.dup_pct > 0 && rng.random_range(0..100) < p.dup_pct {
            out.push(one(rng));
        }
        out
    }

    /// Hosts other than `host`, among `up`, that it can exchange contact probes with: a link
    /// both ways, directly or through one relay that is up (probes are relayed once, like
    /// SWIM's indirect probes).
    pub fn contact_peers(&self, host: usize, up: &[bool]) -> usize {
        let both = |a: usize, b: usize| self.open(a, b) && self.open(b, a);
        (0..self.n)
            .filter(|&y| {
                y != host
                    && up[y]
                    && (both(host, y)
                        || (0..self.n)
                            .any(|r| r != host && r != y && up[r] && both(host, r) && both(r, y)))
            })
            .count()
    }

    /// Hosts mutually reachable with `host` (both directions open), transitively, among `up`.
    pub fn component(&self, host: usize, up: &[bool]) -> Vec<usize> {
        let mut seen = vec![false; self.n];
        let mut stack = vec![host];
        seen[host] = true;
        while let Some(x) = stack.pop() {
            for y in 0..self.n {
                if !seen[y] && up[y] && self.open(x, y) && self.open(y, x) {
                    seen[y] = true;
                    stack.push(y);
                }
            }
        }
        (0..self.n).filter(|&i| seen[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn partitions_and_components() {
        let mut net = Network::new(5, NetParams::default());
        net.partition(&[vec![0, 1, 2], vec![3, 4]], 7);
        assert!(!net.open(0, 3) && !net.open(4, 1));
        assert!(net.open(0, 1) && net.open(3, 4));
        let up = vec![true; 5];
        assert_eq!(net.component(0, &up), vec![0, 1, 2]);
        assert_eq!(net.component(4, &up), vec![3, 4]);
        assert_eq!(net.changed_at, 7);
        net.heal(9);
        assert_eq!(net.component(4, &up).len(), 5);
        net.set_link(0, 1, true, 10);
        assert_eq!(
            net.component(0, &up).len(),
            5,
            "an asymmetric cut still connects through others"
        );
    }

    #[test]
    fn loss_drops_datagrams_not_reliable_messages() {
        let mut net = Network::new(
            2,
            NetParams {
                loss_pct: 100,
                ..NetParams::default()
            },
        );
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert!(net.delays(0, 1, false, &mut rng).is_empty());
        net.params.loss_pct = 50;
        assert_eq!(net.delays(0, 1, true, &mut rng).len(), 1);
    }
}
