//! Per-connection deadlines: what is due, and when the next thing is due.
//!
//! Deadlines are lazy: activity only moves timestamps forward, and the single wheel
//! entry a connection owns is re-inserted at the real deadline when it fires early.

use std::num::NonZeroU64;

/// Why a connection expired, in priority order (auth first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Expiry {
    /// The auth deadline passed.
    Auth = 1,
    /// Authenticated and no data frame for `heartbeat_timeout`.
    Heartbeat = 2,
    /// Nothing at all received for `idle_timeout`.
    Idle = 3,
}

impl Expiry {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Hub-wide timeouts in milliseconds; zero disables one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub heartbeat_ms: u64,
    pub idle_ms: u64,
    pub send_pings: bool,
}

/// What a connection needs at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Expired(Expiry),
    Ping,
    Nothing,
}

/// A connection's timestamps (ms) and deadline state.
#[derive(Clone, Debug)]
pub(crate) struct Clocks {
    /// Last data frame (or authentication); drives the heartbeat deadline.
    pub last_activity: u64,
    /// Last frame of any kind; drives the idle deadline and pings.
    pub last_recv: u64,
    pub auth_deadline: Option<u64>,
    /// A ping went out since `last_recv`.
    pub ping_sent: bool,
    /// Reported by a sweep: every deadline is disarmed for good.
    pub expired: bool,
    /// Tick of this connection's one live wheel entry, plus one (no `Option` tag).
    wheel_due: Option<NonZeroU64>,
}

impl Clocks {
    pub fn new(now: u64) -> Self {
        Clocks {
            last_activity: now,
            last_recv: now,
            auth_deadline: None,
            ping_sent: false,
            expired: false,
            wheel_due: None,
        }
    }

    /// Tick of this connection's one live wheel entry.
    #[inline]
    pub fn wheel_due(&self) -> Option<u64> {
        self.wheel_due.map(|due| due.get() - 1)
    }

    /// Ticks stay far below `u64::MAX` (the wheel's horizon is 2^32 ticks ahead).
    pub fn set_wheel_due(&mut self, due: Option<u64>) {
        self.wheel_due = due.and_then(|due| NonZeroU64::new(due.saturating_add(1)));
    }

    fn heartbeat_deadline(&self, authenticated: bool, t: &Timeouts) -> Option<u64> {
        (authenticated && t.heartbeat_ms > 0)
            .then(|| self.last_activity.saturating_add(t.heartbeat_ms))
    }

    fn idle_deadline(&self, t: &Timeouts) -> Option<u64> {
        (t.idle_ms > 0).then(|| self.last_recv.saturating_add(t.idle_ms))
    }

    fn ping_deadline(&self, t: &Timeouts) -> Option<u64> {
        (t.send_pings && t.idle_ms > 0 && !self.ping_sent)
            .then(|| self.last_recv.saturating_add(t.idle_ms / 2))
    }

    /// The earliest instant something is due, if anything is armed.
    pub fn next_deadline(&self, authenticated: bool, t: &Timeouts) -> Option<u64> {
        if self.expired {
            return None;
        }
        [
            self.auth_deadline,
            self.heartbeat_deadline(authenticated, t),
            self.idle_deadline(t),
            self.ping_deadline(t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// What is due at `now`; expiry outranks a ping, auth outranks heartbeat and idle.
    pub fn due(&self, authenticated: bool, t: &Timeouts, now: u64) -> Due {
        if self.expired {
            return Due::Nothing;
        }
        let passed = |deadline: Option<u64>| deadline.is_some_and(|d| d <= now);
        if passed(self.auth_deadline) {
            Due::Expired(Expiry::Auth)
        } else if passed(self.heartbeat_deadline(authenticated, t)) {
            Due::Expired(Expiry::Heartbeat)
        } else if passed(self.idle_deadline(t)) {
            Due::Expired(Expiry::Idle)
        } else if passed(self.ping_deadline(t)) {
            Due::Ping
        } else {
            Due::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        heartbeat_ms: 90_000,
        idle_ms: 60_000,
        send_pings: true,
    };

    #[test]
    fn unauthenticated_connection_has_no_heartbeat() {
        let c = Clocks::new(0);
        assert_eq!(c.next_deadline(false, &T), Some(30_000));
        assert_eq!(c.due(false, &T, 90_000), Due::Expired(Expiry::Idle));
    }

    #[test]
    fn auth_outranks_heartbeat_and_idle() {
        let mut c = Clocks::new(0);
        c.auth_deadline = Some(100_000);
        assert_eq!(c.due(true, &T, 100_000), Due::Expired(Expiry::Auth));
        c.auth_deadline = None;
        c.last_recv = 50_000;
        assert_eq!(c.due(true, &T, 100_000), Due::Expired(Expiry::Heartbeat));
    }

    #[test]
    fn ping_is_due_at_half_idle_once_per_receive() {
        let mut c = Clocks::new(0);
        assert_eq!(c.due(false, &T, 29_999), Due::Nothing);
        assert_eq!(c.due(false, &T, 30_000), Due::Ping);
        c.ping_sent = true;
        assert_eq!(c.due(false, &T, 30_000), Due::Nothing);
        assert_eq!(c.next_deadline(false, &T), Some(60_000));
    }

    #[test]
    fn expired_connection_has_nothing_armed() {
        let mut c = Clocks::new(0);
        c.expired = true;
        assert_eq!(c.next_deadline(true, &T), None);
        assert_eq!(c.due(true, &T, u64::MAX), Due::Nothing);
    }
}
