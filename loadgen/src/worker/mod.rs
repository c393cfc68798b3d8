//! One event loop per thread: it opens its share of the connections, drives them through
//! the run's phases, and returns what it counted.
//!
//! Each pass, in order: read the clock and the phase (a phase change is acted on at once:
//! start sending, stop, close everything) -> open the connections that are due (paced by
//! `--rate` or capped by `--concurrency`) -> send the rate-driven messages that are due ->
//! expire handshakes and close handshakes past their deadline -> publish gauges and, once a
//! second, a tick -> poll for readiness, with a timeout that is the nearest of all those
//! deadlines -> handle each ready connection: at most one write for what the request, the
//! replies and the pongs produced, after one read.
//!
//! Stale tokens (a connection removed earlier in the same pass) are skipped; deadline and
//! schedule entries carry the connection's global index so a reused slab slot is never
//! mistaken for the connection they were made for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use hdrhistogram::Histogram;
use mio::{Events, Poll, Token, Waker};
use rand::SeedableRng;
use slab::Slab;
use starling::proto::handshake;
use starling::proto::OpCode;

use crate::cli::{Mode, Scenario};
use crate::client::{Conn, Io, Outcome, Part, State};
use crate::clock::now_ns;
use crate::control::{Control, Phase};
use crate::hub::session::HubIo;
use crate::plan::Plan;
use crate::stats::{new_histogram, PerChannel, Stats};
use crate::workload::{echo_payload, FrameBatch};

mod schedule;

use schedule::take_budget;

/// The token of the thread's waker; connection tokens are slab keys, far below it.
const WAKER: Token = Token(usize::MAX);
/// Read buffer per thread.
const READ_BUF: usize = 64 * 1024;
/// Messages one rate-driven sender catches up at most per pass.
const CATCH_UP: u32 = 1024;
/// Messages an unpaced (`--rate` not given) publisher queues per pass.
const ASAP_BATCH: u32 = 32;
/// How long we wait for the server's Close after ours, and for its FIN after that.
const CLOSE_WAIT_NS: u64 = 2_000_000_000;
/// Longest poll sleep: phase changes also wake the thread, this only bounds surprises.
const MAX_SLEEP_NS: u64 = 100_000_000;
const TICK_NS: u64 = 1_000_000_000;

/// This thread's share of the plan.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Thread index in the process.
    pub index: usize,
    /// Global index of the first main connection and how many (churn: parallel cycles).
    pub conns: (u64, u64),
    /// First global publisher id and how many (fanout).
    pub pubs: (u64, u64),
    /// This thread's share of `--count`.
    pub count: Option<u64>,
    /// Connections (or churn cycles) started per second by this thread.
    pub open_rate: Option<f64>,
    /// Handshakes in flight at most.
    pub concurrency: u64,
    /// Echo open loop: ns between messages on one connection. Fanout: per publisher.
    pub send_interval_ns: Option<u64>,
}

/// What a thread hands the coordinator once a second (and at each capacity step change).
pub struct Tick {
    /// Capacity step the figures belong to.
    pub step: u32,
    /// Message latency recorded since the previous tick.
    pub hist: Histogram<u64>,
    /// Messages sent since the previous tick.
    pub sent: u64,
    /// Messages received since the previous tick.
    pub received: u64,
    /// Errors since the previous tick.
    pub errors: u64,
}

/// The parts of the upgrade request that do not change between connections.
struct Request<'a> {
    hosts: &'a [String],
    path: &'a str,
    protocols: Vec<&'a str>,
    headers: &'a [(String, String)],
}

/// Runs one thread's event loop to the end of the run.
pub fn run(
    plan: Arc<Plan>,
    spec: Spec,
    ctl: Arc<Control>,
    ticks: Sender<Tick>,
) -> io::Result<Stats> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    if let Ok(mut w) = ctl.wakers.lock() {
        w.push(waker);
    }
    let req = Request {
        hosts: &plan.hosts,
        path: &plan.path,
        protocols: plan.protocols.iter().map(String::as_str).collect(),
        headers: &plan.headers,
    };
    let payload = echo_payload(plan.size);
    let hub_channels = ctl.channels.len();
    let opcode = if plan.text {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let mut w = Worker {
        plan: &plan,
        ctl: &ctl,
        req,
        poll,
        conns: Slab::new(),
        io: Io {
            buf: vec![0; READ_BUF],
            scratch: Vec::with_capacity(READ_BUF),
            stats: Stats {
                channels: PerChannel::new(hub_channels),
                ..Stats::default()
            },
            interval: new_histogram(),
            rng: rand::rngs::StdRng::from_entropy(),
            now: now_ns(),
            frames: FrameBatch::new(opcode, &payload),
            payload,
            publishers: plan.publishers as u32,
            first_message: plan.first_message.clone(),
            hub: match (&plan.subscribe, plan.mode) {
                (Some(ch), _) => Some(HubIo::watch(ch, plan.count.unwrap_or(1))),
                (None, Mode::Hub) => Some(HubIo::new(plan.channels, plan.size)),
                (None, Mode::Raw) => None,
            },
            max_message: plan.max_message,
            fastopen: plan.fastopen,
            nodelay: matches!(
                plan.scenario,
                Scenario::Echo | Scenario::Fanout | Scenario::Capacity
            ),
            measuring: false,
        },
        phase: Phase::Ramp,
        pace_start: now_ns(),
        pace_base: 0,
        opened: 0,
        pubs_opened: 0,
        opens_progressed: false,
        pending: 0,
        open_now: 0,
        handshake_q: VecDeque::new(),
        close_q: VecDeque::new(),
        sends: BinaryHeap::new(),
        publishers: Vec::new(),
        budget: spec.count,
        step: 0,
        next_tick: now_ns() + TICK_NS,
        last_tick: (0, 0, 0),
        close_deadline: u64::MAX,
        ticks,
        spec,
    };
    w.run_loop()?;
    w.tick(true);
    Ok(w.io.stats)
}

struct Worker<'a> {
    plan: &'a Plan,
    spec: Spec,
    ctl: &'a Control,
    req: Request<'a>,
    poll: Poll,
    conns: Slab<Conn>,
    io: Io,
    phase: Phase,
    /// Pacing of opens: the k-th open since `pace_start` is due at `pace_start + k / rate`,
    /// counting from `pace_base` opens.
    pace_start: u64,
    pace_base: u64,
    /// Main connections (or churn cycles) started.
    opened: u64,
    pubs_opened: u64,
    /// The last `open_due` pass started at least one connection (unpaced opens then keep the
    /// poll from waiting; a pass whose opens all failed lets it wait, so a dead target is
    /// not retried in a busy loop).
    opens_progressed: bool,
    /// Handshakes in flight.
    pending: u64,
    /// Connections open (upgraded, not yet closed).
    open_now: u64,
    /// (deadline, key, global) of handshakes, oldest first (one timeout, so sorted).
    handshake_q: VecDeque<(u64, usize, u64)>,
    /// (deadline, key, global) of close handshakes, oldest first.
    close_q: VecDeque<(u64, usize, u64)>,
    /// (due, key, global) of rate-driven senders.
    sends: BinaryHeap<Reverse<(u64, usize, u64)>>,
    /// Keys of open publishers (for unpaced publishing).
    publishers: Vec<usize>,
    /// Messages (echo, fanout) or cycles (churn) this thread may still start.
    budget: Option<u64>,
    step: u32,
    next_tick: u64,
    last_tick: (u64, u64, u64),
    close_deadline: u64,
    ticks: Sender<Tick>,
}

impl Worker<'_> {
    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let coalesce = self.plan.coalesce.as_nanos() as u64;
        if coalesce > 0 {
            starling::sys::set_thread_timer_slack(crate::coalesce::SLACK_NS)?;
        }
        // The last poll brought a few events while measuring (`--coalesce`).
        let mut few = false;
        loop {
            let now = now_ns();
            self.io.now = now;
            let phase = self.ctl.phase();
            if phase != self.phase {
                self.enter(phase, now);
            }
            if self.phase == Phase::Close && (self.conns.is_empty() || now >= self.close_deadline) {
                self.abandon_rest();
                return Ok(());
            }
            self.check_step();
            self.open_due(now);
            let asap_busy = self.send_due(now);
            self.expire(now);
            self.publish_gauges();
            if now >= self.next_tick {
                self.tick(false);
            }
            let timeout = if asap_busy {
                0
            } else {
                self.sleep_ns(now_ns())
            };
            if few && timeout > 0 {
                // Let the replies of several connections gather before the next wakeup.
                std::thread::sleep(Duration::from_nanos(coalesce.min(timeout)));
                self.io.stats.c.coalesce_waits += 1;
            }
            self.io.stats.c.polls += 1;
            match self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(timeout)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if coalesce > 0 {
                let n = events.iter().take(crate::coalesce::BELOW).count();
                few = (1..crate::coalesce::BELOW).contains(&n) && self.phase == Phase::Measure;
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                self.handle(
                    ev.token().0,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                    ev.is_read_closed() || ev.is_error(),
                );
            }
        }
    }

    /// Acts on a phase change.
    fn enter(&mut self, phase: Phase, now: u64) {
        self.phase = phase;
        self.io.measuring = phase == Phase::Measure;
        match phase {
            Phase::Ramp => {}
            Phase::Measure => {
                self.pace_start = now;
                self.pace_base = self.opened;
                self.tick(true);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let c = &self.conns[key];
                    // A hub subscriber counts once the server has said yes.
                    let subscribed = self.io.hub.is_none() || c.sub.live;
                    if c.part == Part::Subscriber && c.state == State::Open && subscribed {
                        self.io.stats.c.subscribers_at_start += 1;
                        let ch = c.sub.channel as usize;
                        if let Some(n) = self.io.stats.channels.subscribers.get_mut(ch) {
                            *n += 1;
                            self.ctl.channels[ch].subscribers.fetch_add(1, Relaxed);
                        }
                    }
                    self.start_sending(key, now);
                }
            }
            Phase::Drain => self.tick(true),
            Phase::Close => {
                self.close_deadline = now + CLOSE_WAIT_NS;
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let c = &mut self.conns[key];
                    match c.state {
                        State::Connecting | State::Handshaking | State::Subscribing => {
                            self.io.stats.c.abandoned += 1;
                            self.remove(key);
                        }
                        State::Open => {
                            c.queue_close(&mut self.io);
                            let global = c.global;
                            self.close_q.push_back((now + CLOSE_WAIT_NS, key, global));
                            if c.flush(&mut self.io) == Outcome::Drop {
                                self.remove(key);
                            }
                        }
                        State::Closing | State::AwaitEof => {}
                    }
                }
            }
        }
    }

    /// capacity: a new step resets the pacing and closes the tick of the old one.
    fn check_step(&mut self) {
        let step = self.ctl.step.load(Relaxed);
        if step != self.step {
            self.tick(true);
            self.step = step;
            self.gauge().step_seen.store(step, Relaxed);
            self.pace_start = self.io.now;
            self.pace_base = self.opened;
        }
    }

    /// One readiness event for connection `key`.
    fn handle(&mut self, key: usize, readable: bool, writable: bool, peer_closed: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return; // removed earlier in this pass
        };
        self.io.now = now_ns();
        let was = c.state;
        let mut outcome = Outcome::Keep;
        if was == State::Connecting && writable {
            let req = &self.req;
            let target = c.target;
            outcome = c.send_request(&mut self.io, |out, k| write_request(req, target, out, k));
        }
        let mut replies = 0;
        if outcome == Outcome::Keep && readable {
            (outcome, replies) = c.on_readable(&mut self.io, peer_closed);
        }
        if outcome == Outcome::Keep && replies > 0 && self.phase == Phase::Measure {
            // Closed loop: every reply lets one more message go.
            let closed_loop =
                self.plan.scenario == Scenario::Echo && self.spec.send_interval_ns.is_none();
            if closed_loop {
                let n = take_budget(&mut self.budget, u64::from(replies));
                let now = self.io.now;
                c.queue_echo(&mut self.io, n as u32, now);
            }
        }
        if outcome == Outcome::Keep {
            outcome = c.flush(&mut self.io);
        } else {
            self.io.scratch.clear();
        }
        let now_state = c.state;
        let opened = was.is_pending() && !now_state.is_pending();
        if opened {
            // Counted open first, so that `remove` finds the books balanced even when the
            // same read that completed the handshake also ended the connection.
            self.pending -= 1;
            self.open_now += 1;
            self.gauge().last_open_ns.store(self.io.now, Relaxed);
            let peak = &mut self.io.stats.c.peak_open;
            *peak = (*peak).max(self.open_now);
        }
        if outcome == Outcome::Drop {
            self.remove(key);
            return;
        }
        if opened {
            self.on_open(key);
        }
        if was != now_state && now_state == State::Closing {
            let global = self.conns[key].global;
            self.close_q
                .push_back((self.io.now + CLOSE_WAIT_NS, key, global));
        }
    }

    fn on_open(&mut self, key: usize) {
        let now = self.io.now;
        match self.plan.scenario {
            Scenario::Churn => {
                let c = &mut self.conns[key];
                c.queue_close(&mut self.io);
                let global = c.global;
                if c.flush(&mut self.io) == Outcome::Drop {
                    self.remove(key);
                    return;
                }
                self.close_q.push_back((now + CLOSE_WAIT_NS, key, global));
            }
            _ if self.phase == Phase::Measure => self.start_sending(key, now),
            _ => {}
        }
    }

    /// Removes a connection; what happened to it is already counted.
    fn remove(&mut self, key: usize) {
        let Some(c) = self.conns.try_remove(key) else {
            return;
        };
        if c.state.is_pending() {
            self.pending -= 1;
        } else {
            self.open_now -= 1;
        }
        if self.plan.scenario == Scenario::Churn && c.state == State::AwaitEof {
            self.io.stats.c.cycles += 1;
        }
        // Dropping the stream closes the descriptor, which also removes it from epoll.
    }

    fn abandon_rest(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.conns[key].state {
                State::Closing => self.io.stats.c.close_timeouts += 1,
                State::Connecting | State::Handshaking | State::Subscribing => {
                    self.io.stats.c.abandoned += 1
                }
                _ => {}
            }
            self.remove(key);
        }
        self.publish_gauges();
    }

    fn gauge(&self) -> &crate::control::Gauge {
        &self.ctl.gauges[self.spec.index]
    }

    fn publish_gauges(&self) {
        let c = &self.io.stats.c;
        let g = self.gauge();
        g.open.store(self.open_now, Relaxed);
        g.pending.store(self.pending, Relaxed);
        g.attempts.store(c.connect_attempts, Relaxed);
        g.handshakes.store(c.handshakes, Relaxed);
        g.failures.store(self.io.stats.failures.total(), Relaxed);
        g.errors.store(self.io.stats.errors(), Relaxed);
        g.sent.store(c.messages_sent, Relaxed);
        g.received.store(c.messages_received, Relaxed);
        g.unique_deliveries
            .store(c.deliveries - c.duplicates, Relaxed);
        g.published.store(c.published, Relaxed);
        g.subscribers.store(c.subscribers_at_start, Relaxed);
        g.cycles.store(c.cycles, Relaxed);
        let echo = matches!(self.plan.scenario, Scenario::Echo | Scenario::Capacity);
        let inflight = if echo {
            c.messages_sent.saturating_sub(c.messages_received)
        } else if self.io.hub.is_some() {
            // Hub publishes in flight: not answered yet.
            c.published
                .saturating_sub(c.hub_acks + c.hub_publish_errors)
        } else {
            0
        };
        g.inflight.store(inflight, Relaxed);
        if let Some(n) = self.spec.count {
            let done = match self.plan.scenario {
                Scenario::Echo => c.messages_received >= n,
                Scenario::Fanout => self.spec.pubs.1 == 0 || c.published >= n,
                Scenario::Churn => c.cycles >= n,
                // Every subscriber has heard its --count (`n` is per subscriber here).
                Scenario::Connect => {
                    self.gauge().ramp_done.load(Relaxed)
                        && c.watchers_reached >= c.watchers_subscribed
                }
                _ => false,
            };
            g.count_done.store(done, Relaxed);
        }
        if self.phase >= Phase::Drain {
            let drained = match self.plan.scenario {
                Scenario::Churn => self.conns.is_empty(),
                _ => inflight == 0,
            };
            g.drained.store(drained, Relaxed);
        }
    }

    /// Folds the interval histogram into the run's, and hands a copy to the coordinator.
    fn tick(&mut self, force: bool) {
        let io = &mut self.io;
        if !force && io.interval.is_empty() && self.next_tick > io.now {
            return;
        }
        self.next_tick = now_ns() + TICK_NS;
        let _ = io.stats.latency.add(&io.interval);
        let c = &io.stats.c;
        let errors = io.stats.errors();
        let (s0, r0, e0) = self.last_tick;
        self.last_tick = (c.messages_sent, c.messages_received, errors);
        let tick = Tick {
            step: self.step,
            hist: io.interval.clone(),
            sent: c.messages_sent - s0,
            received: c.messages_received - r0,
            errors: errors.saturating_sub(e0),
        };
        io.interval.reset();
        // The coordinator may be gone (Ctrl-C twice); the figures are in `stats` anyway.
        let _ = self.ticks.send(tick);
    }
}

fn write_request(req: &Request<'_>, target: usize, out: &mut Vec<u8>, key: &[u8; 24]) {
    handshake::write_request(
        out,
        &req.hosts[target],
        req.path,
        key,
        &req.protocols,
        req.headers,
    );
}
