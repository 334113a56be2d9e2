//! Noticing a consumer group whose assignment leaves partitions to nobody.
//!
//! On Kafka, a member that dies without leaving (SIGKILL, a lost host) is expired after
//! `session.timeout.ms` and the group rebalances: its partitions go to the survivors.
//! tansu 0.6 expires the member and rebalances, but hands every survivor its old
//! assignment back (see README, "Kafka"), so the dead member's partitions are never
//! read again. A survivor can see that from its own share: every assignor Kafka
//! clients use (range, round-robin, sticky, cooperative-sticky) gives each of M members
//! at least ⌊P/M⌋ of P partitions. A member that owns fewer for longer than a
//! rebalance takes leaves the group and joins it again, which makes the broker start a
//! new generation and assign every partition afresh (LeaveGroup works on tansu).
//!
//! The check cannot see every such case: it needs a survivor short of its fair share
//! (with 5 partitions, 3 members and the one owning 1 killed, the survivors keep 2
//! each and partition 4 stays orphaned). It always sees the case of a group left with
//! one member, and the common one of equal shares. On a broker that works it never
//! fires; its cost is a DescribeGroups and a metadata request per check.

use std::time::{Duration, Instant};

/// What a member has seen of its share since it was last fair.
#[derive(Debug)]
pub struct StaleGroupWatch {
    /// How long a member may own less than its share: longer than a session timeout
    /// plus a rebalance on a broker that works.
    grace: Duration,
    /// Since when the member has owned less than its share.
    short_since: Option<Instant>,
}

impl StaleGroupWatch {
    /// A watch for a consumer whose session times out after `session_timeout`.
    pub fn new(session_timeout: Duration) -> Self {
        StaleGroupWatch { grace: session_timeout * 2, short_since: None }
    }

    /// How often the group is described.
    pub fn check_every(&self) -> Duration {
        self.grace / 4
    }

    /// One check: the member owns `owned` of the topic's `partitions`, and the group
    /// has `members`. True when the member should leave and rejoin.
    pub fn stale(&mut self, owned: usize, partitions: usize, members: usize, now: Instant) -> bool {
        let fair = partitions.checked_div(members).unwrap_or(0);
        if owned >= fair {
            self.short_since = None;
            return false;
        }
        let since = *self.short_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.grace {
            return false;
        }
        // The rejoin's rebalance gets a whole grace of its own.
        self.short_since = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(6);

    #[test]
    fn a_member_short_of_its_share_past_the_grace_rejoins() {
        let t0 = Instant::now();
        let mut w = StaleGroupWatch::new(SESSION);
        assert!(!w.stale(2, 4, 2, t0), "a fair share");
        assert!(!w.stale(2, 4, 1, t0), "alone with half the partitions: the grace starts");
        assert!(!w.stale(2, 4, 1, t0 + SESSION));
        assert!(w.stale(2, 4, 1, t0 + SESSION * 2), "still short after the grace");
        assert!(!w.stale(2, 4, 1, t0 + SESSION * 3), "the rejoin gets a grace of its own");
        assert!(w.stale(2, 4, 1, t0 + SESSION * 5));
    }

    #[test]
    fn a_rebalance_that_makes_the_share_fair_cancels_it() {
        let t0 = Instant::now();
        let mut w = StaleGroupWatch::new(SESSION);
        assert!(!w.stale(0, 4, 2, t0), "between revocation and assignment");
        assert!(!w.stale(2, 4, 2, t0 + SESSION), "assigned");
        assert!(!w.stale(2, 4, 2, t0 + SESSION * 9));
        assert!(!w.stale(1, 5, 3, t0 + SESSION * 10), "5 over 3: one each at least");
        assert!(!w.stale(0, 4, 6, t0 + SESSION * 20), "more members than partitions");
        assert!(!w.stale(0, 4, 0, t0 + SESSION * 30), "the group could not be described");
        assert!(!w.stale(0, 4, 0, t0 + SESSION * 40));
    }
}
