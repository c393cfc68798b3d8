//! When things are due in a worker: opening connections (paced by `--rate`, capped by
//! `--concurrency` or churn's cycles in flight), rate-driven sends (a heap of per-connection
//! due times, catching up with each message stamped at its intended time), deadlines
//! (handshake and close timeouts), and how long the next poll may sleep.

use std::cmp::Reverse;
use std::sync::atomic::Ordering::Relaxed;

use mio::{Interest, Token};
use rand::Rng;

use super::{write_request, Worker, ASAP_BATCH, CATCH_UP, MAX_SLEEP_NS};
use crate::cli::Scenario;
use crate::client::{Conn, LocalPort, Outcome, Part, State};
use crate::clock::{now_ns, ns};
use crate::control::{Control, Phase};

/// Connections started per pass at most, so a fast ramp still services the ones opened.
const OPENS_PER_PASS: usize = 256;

impl Worker<'_> {
    /// How many main connections this thread should have started by now (cap, not pace).
    pub(super) fn open_target(&self) -> u64 {
        let s = self.plan.scenario;
        match (s, self.phase) {
            (Scenario::Connect | Scenario::Echo | Scenario::Fanout, Phase::Ramp) => {
                self.spec.conns.1
            }
            (Scenario::Capacity, Phase::Measure) => {
                let total = self.ctl.capacity_conns.load(Relaxed);
                let threads = self.ctl.gauges.len() as u64;
                crate::addr::share(total, threads, self.spec.index as u64).1
            }
            (Scenario::Churn, Phase::Measure) => self.spec.count.unwrap_or(u64::MAX),
            _ => 0,
        }
    }

    pub(super) fn open_due(&mut self, now: u64) {
        let target = self.open_target();
        self.opens_progressed = false;
        for _ in 0..OPENS_PER_PASS {
            if self.phase == Phase::Ramp && self.pubs_opened < self.spec.pubs.1 {
                let id = self.spec.pubs.0 + self.pubs_opened;
                self.pubs_opened += 1;
                // Publishers take global indices after every subscriber's.
                self.open(self.plan.connections + id, Part::Publisher(id as u32), now);
                continue;
            }
            if self.opened >= target {
                break;
            }
            if self.opens_capped() {
                break;
            }
            let intended = match self.spec.open_rate {
                Some(rate) => {
                    let k = (self.opened - self.pace_base) as f64;
                    let due = self.pace_start + (k * 1e9 / rate) as u64;
                    if due > now {
                        break;
                    }
                    due
                }
                None => now,
            };
            let part = match self.plan.scenario {
                Scenario::Connect if self.plan.subscribe.is_some() => Part::Listener,
                Scenario::Connect | Scenario::Churn => Part::Hold,
                Scenario::Echo | Scenario::Capacity => Part::Echo,
                Scenario::Fanout => Part::Subscriber,
            };
            let global = self.spec.conns.0 + self.opened;
            self.opened += 1;
            self.open(global, part, intended);
        }
        if self.phase == Phase::Ramp
            && self.opened >= self.open_target()
            && self.pubs_opened >= self.spec.pubs.1
            && self.pending == 0
        {
            self.gauge().ramp_done.store(true, Relaxed);
        }
    }

    /// Whether the in-flight cap holds further opens back: handshakes in flight against
    /// `--concurrency`, or (churn) cycles in flight against `--connections`.
    pub(super) fn opens_capped(&self) -> bool {
        if self.plan.scenario == Scenario::Churn {
            self.conns.len() as u64 >= self.spec.conns.1
        } else {
            self.pending >= self.spec.concurrency
        }
    }

    pub(super) fn open(&mut self, global: u64, part: Part, intended: u64) {
        let now = now_ns();
        self.io.now = now;
        self.io.stats.c.connect_attempts += 1;
        let (source, target) = self.plan.endpoints.pair_index(global);
        let addr = self.plan.endpoints.targets[target];
        let local = self.plan.local_ports.as_ref();
        let port = local.map_or(LocalPort::Kernel, |lp| {
            LocalPort::Own(self.plan.endpoints.local_port(global, &lp.usable))
        });
        let (nodelay, fastopen) = (self.io.nodelay, self.io.fastopen);
        let opened = match Conn::connect(source, port, addr, nodelay, fastopen) {
            // Our port is taken towards this target by someone else (another program, or a
            // connection of an earlier run still in TIME_WAIT): let the kernel choose, among
            // the ports this run does not plan to use.
            Err(e)
                if port != LocalPort::Kernel
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
                    ) =>
            {
                let spare = local
                    .and_then(|lp| lp.spare)
                    .map_or(LocalPort::Kernel, |(lo, hi)| LocalPort::Within(lo, hi));
                let r = Conn::connect(source, spare, addr, nodelay, fastopen);
                if r.is_ok() {
                    self.io.stats.c.port_fallbacks += 1;
                }
                r
            }
            r => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                self.io.stats.failures.count_io(&e);
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), interest)
        {
            self.io.stats.failures.count_io(&e);
            return;
        }
        self.opens_progressed = true;
        let mut conn = Conn::new(stream, part, global, target, &mut self.io);
        conn.intended_ns = intended;
        self.pending += 1;
        self.handshake_q
            .push_back((now + ns(self.plan.timeout), key, global));
        // On loopback the connection is usually established before connect() returns, so
        // try the request now instead of waiting a poll round for writability.
        let req = &self.req;
        let outcome = conn.send_request(&mut self.io, |out, k| write_request(req, target, out, k));
        entry.insert(conn);
        if outcome == Outcome::Drop {
            self.remove(key);
        }
    }

    /// Starts a connection's traffic at the beginning of the measured phase (or when it
    /// opens during it).
    pub(super) fn start_sending(&mut self, key: usize, now: u64) {
        let paced = self.send_interval();
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if c.state != State::Open {
            return;
        }
        match (c.part, self.plan.scenario) {
            (Part::Echo, Scenario::Echo) if self.spec.send_interval_ns.is_none() => {
                let n = take_budget(&mut self.budget, u64::from(self.plan.depth));
                c.queue_echo(&mut self.io, n as u32, now);
                if c.flush(&mut self.io) == Outcome::Drop {
                    self.remove(key);
                }
            }
            (Part::Echo, _) | (Part::Publisher(_), _) => {
                let Some(interval) = paced else {
                    if matches!(c.part, Part::Publisher(_)) {
                        self.publishers.push(key);
                    }
                    return;
                };
                // Spread the first sends over one interval so connections do not all fire
                // in the same millisecond.
                c.next_ns = now + self.io.rng.gen_range(0..interval.max(1));
                self.sends.push(Reverse((c.next_ns, key, c.global)));
            }
            _ => {}
        }
    }

    /// The per-sender interval of rate-driven sending, if paced.
    pub(super) fn send_interval(&self) -> Option<u64> {
        if self.plan.scenario == Scenario::Capacity {
            let milli = self.ctl.capacity_rate_milli.load(Relaxed).max(1);
            return Some(1_000_000_000_000 / milli);
        }
        self.spec.send_interval_ns
    }

    /// Sends rate-driven messages that are due; returns whether unpaced publishers wrote.
    pub(super) fn send_due(&mut self, now: u64) -> bool {
        if self.phase != Phase::Measure {
            return false;
        }
        while let Some(&Reverse((due, key, global))) = self.sends.peek() {
            if due > now {
                break;
            }
            self.sends.pop();
            let Some(interval) = self.send_interval() else {
                break;
            };
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.global != global || c.state != State::Open {
                continue;
            }
            let mut n = 0;
            while c.next_ns <= now && n < CATCH_UP && take_budget(&mut self.budget, 1) == 1 {
                match c.part {
                    Part::Publisher(id) => {
                        let channel = c.queue_publish(&mut self.io, id, c.next_ns);
                        count_publish(self.ctl, channel);
                    }
                    _ => c.queue_echo(&mut self.io, 1, c.next_ns),
                }
                c.next_ns += interval;
                n += 1;
            }
            let next = c.next_ns;
            if c.flush(&mut self.io) == Outcome::Drop {
                self.remove(key);
                continue;
            }
            if self.budget != Some(0) {
                self.sends.push(Reverse((next, key, global)));
            }
        }
        let mut wrote = false;
        for i in 0..self.publishers.len() {
            let key = self.publishers[i];
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            let Part::Publisher(id) = c.part else {
                continue;
            };
            if c.state != State::Open || c.backlog() > 0 {
                continue;
            }
            let n = take_budget(&mut self.budget, u64::from(ASAP_BATCH));
            for _ in 0..n {
                let channel = c.queue_publish(&mut self.io, id, now);
                count_publish(self.ctl, channel);
            }
            wrote |= n > 0;
            if c.flush(&mut self.io) == Outcome::Drop {
                self.remove(key);
            }
        }
        wrote
    }

    pub(super) fn expire(&mut self, now: u64) {
        while let Some(&(deadline, key, global)) = self.handshake_q.front() {
            if deadline > now {
                break;
            }
            self.handshake_q.pop_front();
            if let Some(c) = self.conns.get(key) {
                if c.global == global && c.state.is_pending() {
                    self.io.stats.failures.timeout += 1;
                    self.remove(key);
                }
            }
        }
        while let Some(&(deadline, key, global)) = self.close_q.front() {
            if deadline > now {
                break;
            }
            self.close_q.pop_front();
            if let Some(c) = self.conns.get(key) {
                if c.global == global {
                    if c.state == State::Closing {
                        self.io.stats.c.close_timeouts += 1;
                    }
                    self.remove(key);
                }
            }
        }
    }

    /// Nanoseconds until the nearest deadline, at most [`MAX_SLEEP_NS`].
    pub(super) fn sleep_ns(&self, now: u64) -> u64 {
        let mut at = now + MAX_SLEEP_NS;
        if let Some(Reverse((due, _, _))) = self.sends.peek() {
            if self.phase == Phase::Measure {
                at = at.min(*due);
            }
        }
        if self.opened < self.open_target() && !self.opens_capped() {
            at = at.min(match self.spec.open_rate {
                Some(rate) => {
                    let k = (self.opened - self.pace_base) as f64;
                    self.pace_start + (k * 1e9 / rate) as u64
                }
                // As fast as possible: more opens are due now, so the poll must not wait for
                // the server's next answer before they start, unless the last pass could
                // start none (then the next tick or event retries).
                None if self.opens_progressed => now,
                None => at,
            });
        }
        if let Some((d, _, _)) = self.handshake_q.front() {
            at = at.min(*d);
        }
        if let Some((d, _, _)) = self.close_q.front() {
            at = at.min(*d);
        }
        at = at.min(self.close_deadline).min(self.next_tick);
        at.saturating_sub(now)
    }
}

/// Hub fanout: one more message owed to every subscriber of `channel`.
fn count_publish(ctl: &Control, channel: Option<u32>) {
    if let Some(g) = channel.and_then(|c| ctl.channels.get(c as usize)) {
        g.published.fetch_add(1, Relaxed);
    }
}

/// Takes up to `want` from an optional budget; returns how many were granted.
pub(super) fn take_budget(budget: &mut Option<u64>, want: u64) -> u64 {
    match budget {
        None => want,
        Some(left) => {
            let n = want.min(*left);
            *left -= n;
            n
        }
    }
}
