//! How connections end and time out: the close paths (start a close handshake, finish with
//! last bytes, fail with a code), the single timer slot per connection (handshake, heartbeat,
//! pong, close deadlines) and token expiry. The close reason is counted once, when the end is
//! decided, so counters are current while a close handshake or linger is still running.

use crate::hub::presence::parse_anon;
use crate::metrics::CloseReason;
use crate::proto::{close, CloseCode};

use super::conn::{self, flags, Phase, TimerKind};
use super::event_loop::Shard;
use super::send_queue::SendStatus;

/// The close code for a connection whose user the admin API disconnected (RFC 6455 §7.4.2:
/// 4000-4999 are for applications), so a client can tell it from a failure and need not
/// reconnect at once.
pub const DISCONNECTED: CloseCode = CloseCode(4000);

impl Shard {
    /// Records why a connection is ending, once, at the moment that is decided.
    pub(super) fn decide(&mut self, idx: usize, r: CloseReason) {
        if let Some(c) = self.conns.get_mut(idx) {
            if !c.has(flags::COUNTED) {
                c.flags |= flags::COUNTED;
                c.reason = r as u8;
                self.counters.closed[r as usize] += 1;
            }
        }
    }

    pub(super) fn set_timer(&mut self, idx: usize, kind: TimerKind, after_ms: u32) {
        if let Some(c) = self.conns.get_mut(idx) {
            c.timer = kind;
            self.wheel.insert(idx, self.now + after_ms as u64);
        }
    }

    /// Queues our close frame and waits for the peer's (RFC 6455 §7.1.2), up to close_timeout.
    pub(super) fn start_close(&mut self, idx: usize, code: CloseCode, why: &str, r: CloseReason) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if c.phase == Phase::Stream {
            // An event stream has no close handshake: its end is the end of the connection.
            return self.finish_with(idx, r, false, |_| {});
        }
        if c.phase != Phase::Open {
            return;
        }
        c.queue.push_owned(&mut self.pool, usize::MAX, |v| {
            let mut p = [0u8; 125];
            let n = close::close_payload(&mut p, code, why);
            crate::proto::frame::encode_frame_into(v, crate::proto::OpCode::Close, &p[..n], None);
        });
        c.flags |= flags::SENT_CLOSE;
        c.phase = Phase::Closing;
        self.decide(idx, r);
        self.set_timer(idx, TimerKind::Close, self.ms.close);
        self.mark_dirty(idx);
    }

    /// Queues final bytes (a close frame or an HTTP response) and ends the connection once they
    /// are written: no waiting for a reply. `slow` first frees the backlog a slow consumer will
    /// never read.
    pub(super) fn finish_with(
        &mut self,
        idx: usize,
        r: CloseReason,
        slow: bool,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        if matches!(c.phase, Phase::Flushing | Phase::Lingering) {
            return;
        }
        if slow {
            c.queue.truncate_to_partial(&mut self.pool);
        }
        c.queue.push_owned(&mut self.pool, usize::MAX, fill);
        c.phase = Phase::Flushing;
        self.decide(idx, r);
        self.set_timer(idx, TimerKind::Close, self.ms.close);
        self.mark_dirty(idx);
    }

    /// Sends a close frame with `code` and ends the connection without waiting for a reply
    /// (used to fail the connection, §7.1.7, and for slow consumers).
    pub(super) fn fail(&mut self, idx: usize, code: CloseCode, why: &str, r: CloseReason) {
        let slow = r == CloseReason::SlowConsumer;
        if self
            .conns
            .get(idx)
            .is_some_and(|c| c.phase == Phase::Stream)
        {
            // No frames on an event stream: it just ends.
            return self.finish_with(idx, r, slow, |_| {});
        }
        self.finish_with(idx, r, slow, |v| {
            let mut p = [0u8; 125];
            let n = close::close_payload(&mut p, code, why);
            crate::proto::frame::encode_frame_into(v, crate::proto::OpCode::Close, &p[..n], None);
        });
    }

    /// Closes a slow consumer: its backlog is freed and it gets 1008 (the queue bound policy).
    pub(super) fn fail_slow(&mut self, idx: usize) {
        self.fail(
            idx,
            CloseCode::POLICY,
            "slow consumer",
            CloseReason::SlowConsumer,
        );
    }

    /// Closes connections whose token expired (checked every pass; tokens count in seconds
    /// and the poll timeout never exceeds one second).
    pub(super) fn expire_tokens(&mut self) {
        if self.admission.next_expiry().is_none() {
            return;
        }
        for (idx, gen) in self.admission.expired(super::admission::unix_now()) {
            if self.conns.get(idx).is_some_and(|c| c.generation == gen) {
                self.start_close(
                    idx,
                    CloseCode::POLICY,
                    "token expired",
                    CloseReason::TokenExpired,
                );
            }
        }
    }

    /// Starts the close of every open local connection of `user` (a token's `sub`, or an
    /// anonymous id) with [`DISCONNECTED`]; how many. Any app: tokens are read at admission
    /// whatever the app.
    pub(super) fn disconnect_user(&mut self, user: &str) -> usize {
        let targets: Vec<usize> = match parse_anon(user) {
            Some((s, i, g)) => {
                let i = i as usize;
                let is_it = s as usize == self.id
                    && self.admission.grant(i).is_none()
                    && self.conns.get(i).is_some_and(|c| c.generation == g);
                if is_it {
                    vec![i]
                } else {
                    Vec::new()
                }
            }
            None => self
                .admission
                .sessions
                .iter()
                .filter(|(_, s)| s.grant.as_ref().is_some_and(|g| g.user == user))
                .map(|(&idx, _)| idx)
                .collect(),
        };
        let mut closed = 0;
        for idx in targets {
            if self.conns.get(idx).is_some_and(|c| c.phase == Phase::Open) {
                let why = "disconnected by server";
                self.start_close(idx, DISCONNECTED, why, CloseReason::Disconnected);
                closed += 1;
            }
        }
        closed
    }

    pub(super) fn expire_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now, &mut fired);
        for &idx in &fired {
            self.on_timer(idx);
        }
        fired.clear();
        self.fired = fired;
    }

    fn on_timer(&mut self, idx: usize) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let now = self.now as u32;
        match c.timer {
            TimerKind::Handshake => {
                self.finish_with(idx, CloseReason::HandshakeTimeout, false, |v| {
                    v.extend_from_slice(
                        b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    )
                });
            }
            TimerKind::Close => {
                // The reason was counted when the close began; this only ends the wait.
                self.counters.close_timeouts += 1;
                self.remove(idx, CloseReason::IoError);
            }
            TimerKind::Heartbeat => {
                if self.ms.idle > 0
                    && conn::tick_reached(now, c.last_data.wrapping_add(self.ms.idle))
                {
                    self.start_close(idx, CloseCode::NORMAL, "idle timeout", CloseReason::Idle);
                    return;
                }
                let due = c.last_seen.wrapping_add(self.ms.ping);
                if !conn::tick_reached(now, due) {
                    // The peer spoke recently: that counts as liveness, no ping needed yet.
                    let wait = due.wrapping_sub(now);
                    let wait = idle_cap(self.ms.idle, c.last_data, now, wait);
                    self.set_timer(idx, TimerKind::Heartbeat, wait);
                    return;
                }
                c.flags &= !flags::SEEN;
                c.ping_sent = now;
                let status = c.queue.push_owned(&mut self.pool, usize::MAX, |v| {
                    crate::proto::frame::encode_frame_into(v, crate::proto::OpCode::Ping, b"", None)
                });
                debug_assert_ne!(status, SendStatus::Dropped);
                self.set_timer(idx, TimerKind::PongDue, self.ms.pong);
                self.mark_dirty(idx);
            }
            TimerKind::KeepAlive => self.sse_keepalive(idx),
            TimerKind::PongDue => {
                if c.has(flags::SEEN) {
                    c.missed_pongs = 0;
                } else {
                    c.missed_pongs = c.missed_pongs.saturating_add(1);
                    if u32::from(c.missed_pongs) >= self.cfg.max_missed_pongs {
                        // Dead peer: nobody would read a close frame.
                        self.remove(idx, CloseReason::PingTimeout);
                        return;
                    }
                }
                let next = c.ping_sent.wrapping_add(self.ms.ping);
                let wait = if conn::tick_reached(now, next) {
                    0
                } else {
                    next.wrapping_sub(now)
                };
                let wait = idle_cap(self.ms.idle, c.last_data, now, wait);
                self.set_timer(idx, TimerKind::Heartbeat, wait);
            }
        }
    }
}

/// Shortens a heartbeat wait so the idle deadline (`idle` ms after `last_data`; 0 = none) is
/// not overshot.
fn idle_cap(idle: u32, last_data: u32, now: u32, wait: u32) -> u32 {
    if idle == 0 {
        return wait;
    }
    let idle_due = last_data.wrapping_add(idle);
    if conn::tick_reached(now, idle_due) {
        0
    } else {
        wait.min(idle_due.wrapping_sub(now))
    }
}
