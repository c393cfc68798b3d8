//! The per-shard timing wheel: at most one pending deadline per connection, keyed by the
//! connection's slab index. The shard uses it for every connection timeout (ping interval,
//! pong timeout, handshake timeout, idle and close timeouts); which of those a key's timer
//! stands for is the connection's business, not the wheel's.
//!
//! # Contract
//!
//! - Ticks are milliseconds since the shard started (`u64`). The wheel never reads a clock:
//!   the caller passes `now` to [`TimerWheel::advance`].
//! - A key has at most one pending timer; [`TimerWheel::insert`] on a pending key moves it.
//! - `advance(now)` hands back every key whose deadline is `<= now`, each exactly once, and
//!   forgets it. A deadline already `<= now` at insert time fires on the next `advance`.
//! - [`TimerWheel::next_deadline`] is never later than the earliest pending deadline (it is
//!   exact when that timer sits on level 0), so it is safe to use as the poll timeout.
//! - Insert, cancel and per-timer expiry are O(1); nothing allocates per timer.
//!
//! # Levels
//!
//! Eleven levels of 64 slots; each level is 64x coarser than the one below, so together they
//! cover the whole `u64` tick range and every deadline fires at its exact millisecond without
//! rounds or clamping (levels 6 to 10 cost 5 KiB per wheel and are empty in practice).
//!
//! | level | slot width         | level span         |
//! |-------|--------------------|--------------------|
//! | 0     | 1 ms               | 64 ms              |
//! | 1     | 64 ms              | 4.096 s            |
//! | 2     | 4.096 s            | 4 min 22 s         |
//! | 3     | 4 min 22 s         | 4 h 40 min         |
//! | 4     | 4 h 40 min         | 12.4 days          |
//! | 5     | 12.4 days          | 2.2 years          |
//! | 6     | 2.2 years          | 139 years          |
//! | 7     | 139 years          | 8,900 years        |
//! | 8     | 8,900 years        | 571,000 years      |
//! | 9     | 571,000 years      | 36.5 million years |
//! | 10    | 36.5 million years | 2^64 ms (16 slots) |
//!
//! A timer is filed on the level of the highest bit in which its deadline differs from `now`
//! (`level_for`), in the slot named by the deadline's six bits at that level (`slot_for`).
//! So a level-L timer agrees with `now` on every bit above level L, and its slot lies strictly
//! ahead of `now`'s slot on that level. Three facts follow and the code leans on them: every
//! level-L timer expires before any timer on a higher level; the next slot to expire on a level
//! is its lowest set `occupied` bit; and `next_deadline` is the start of the first occupied
//! slot of the lowest non-empty level (a bitfield scan of at most 11 words). When `advance`
//! reaches the start of an occupied slot on level L > 0, the slot's timers that are due by the
//! advance's target fire and the rest are filed again relative to the slot's start, landing on
//! lower levels (a cascade). A timer cascades at most once per level, so expiry is O(1) per
//! timer.
//!
//! The pong (5 s), handshake (10 s) and ping (30 s) timeouts land on level 2, or on level 3
//! when they cross a 262 s boundary, and cascade at most two or three times before firing,
//! unless traffic pushes them back first, which is the common case for pings.
//!
//! # Memory
//!
//! Lists are circular and doubly linked through `u32` indices into one `Vec<Node>`. Its first
//! 705 nodes are sentinels, one per slot plus one for the due list (deadlines already
//! reached at insert time), so a slot's head is a node like any other: link and unlink never
//! branch on first/last, and an unlink that leaves a sentinel alone clears its `occupied`
//! bit. The key nodes follow, indexed by key and grown on demand.
//!
//! Cost: **16 bytes per key** (`deadline: u64`, `next: u32`, `prev: u32`, asserted below) plus
//! 11,280 bytes of sentinels per wheel, so a million connections take 16 MB of timer state.
//! uSockets, the baseline in `benches/timer.rs`, keeps one byte per socket but sweeps every
//! socket on each 4 s tick and so only knows 4 s granularity.

use std::fmt;

/// log2 of the slots per level.
const LEVEL_BITS: u32 = 6;
/// Slots per level; one bit each in a level's `occupied` word.
const SLOTS: usize = 1 << LEVEL_BITS;
/// Enough levels that `LEVELS * LEVEL_BITS >= 64`: every `u64` deadline has a level.
const LEVELS: usize = 11;
/// Sentinel of the due list: timers whose deadline had already passed when inserted.
const DUE: usize = LEVELS * SLOTS;
/// Nodes before the first key node.
const SENTINELS: usize = DUE + 1;
/// "No link": the state of a key node that has no pending timer.
const NONE: u32 = u32::MAX;

/// Keys must be below this: a key's node index (`key + 705`) must fit a `u32` link
/// other than `NONE`.
pub const MAX_KEYS: usize = NONE as usize - SENTINELS;

/// The level a timer due at `deadline` is filed on when the time is `now`: the level holding
/// the highest bit in which the two differ (level 0 when they differ only in the low 6 bits).
fn level_for(now: u64, deadline: u64) -> usize {
    // Setting the low six bits maps "differ only there" (or not at all) to level 0, and keeps
    // ilog2's argument non-zero.
    let differing = (now ^ deadline) | (SLOTS as u64 - 1);
    let highest_bit = differing.ilog2();
    (highest_bit / LEVEL_BITS) as usize
}

/// The slot of `deadline` on `level`: its six bits at that level.
fn slot_for(deadline: u64, level: usize) -> usize {
    ((deadline >> (level as u32 * LEVEL_BITS)) as usize) & (SLOTS - 1)
}

/// The first tick of `slot` on `level` within the level window that contains `now`.
fn slot_start(now: u64, level: usize, slot: usize) -> u64 {
    let span_bits = (level as u32 + 1) * LEVEL_BITS;
    // The top level spans the whole u64 range, so its window always starts at 0.
    let window_start = if span_bits >= 64 {
        0
    } else {
        now & !((1u64 << span_bits) - 1)
    };
    window_start + ((slot as u64) << (level as u32 * LEVEL_BITS))
}

/// One list node: a slot's sentinel or a key's timer. `next == NONE` means "not pending".
#[derive(Clone, Copy)]
struct Node {
    /// The tick the timer fires at (unused in sentinels).
    deadline: u64,
    /// Next node in the circular list.
    next: u32,
    /// Previous node in the circular list.
    prev: u32,
}

const _: () = assert!(
    std::mem::size_of::<Node>() == 16,
    "16 bytes per key, see module doc"
);

impl Node {
    const DETACHED: Node = Node {
        deadline: 0,
        next: NONE,
        prev: NONE,
    };
}

/// A hierarchical timing wheel with at most one timer per key; see the module docs.
#[derive(Clone)]
pub struct TimerWheel {
    /// Sentinels (`0..SENTINELS`), then one node per key (`SENTINELS + key`).
    nodes: Vec<Node>,
    /// Bit `s` of `occupied[l]` is set iff slot `s` of level `l` holds a timer.
    occupied: [u64; LEVELS],
    /// The current tick; only moves forward.
    now: u64,
    /// Pending timers.
    len: usize,
}

impl TimerWheel {
    /// An empty wheel at tick 0.
    pub fn new() -> TimerWheel {
        TimerWheel::with_capacity(0)
    }

    /// An empty wheel at tick 0 with room for keys `0..keys` without growing.
    pub fn with_capacity(keys: usize) -> TimerWheel {
        let mut nodes = Vec::with_capacity(SENTINELS + keys);
        // An empty circular list is a sentinel linked to itself.
        nodes.extend((0..SENTINELS as u32).map(|i| Node {
            deadline: 0,
            next: i,
            prev: i,
        }));
        nodes.resize(SENTINELS + keys, Node::DETACHED);
        TimerWheel {
            nodes,
            occupied: [0; LEVELS],
            now: 0,
            len: 0,
        }
    }

    /// Schedules (or reschedules) `key` at tick `deadline`. A deadline `<= now` fires on the
    /// next `advance`.
    ///
    /// # Panics
    ///
    /// If `key >= MAX_KEYS` (slab indices never get near it).
    pub fn insert(&mut self, key: usize, deadline: u64) {
        assert!(key < MAX_KEYS, "timer key {key} out of range");
        let idx = SENTINELS + key;
        if idx >= self.nodes.len() {
            self.nodes.resize(idx + 1, Node::DETACHED);
        }
        if self.nodes[idx].next == NONE {
            self.len += 1;
        } else {
            self.unlink(idx);
        }
        self.nodes[idx].deadline = deadline;
        self.file(idx);
    }

    /// Cancels `key`'s timer if any; returns whether one was pending.
    pub fn cancel(&mut self, key: usize) -> bool {
        match self.pending_index(key) {
            Some(idx) => {
                self.unlink(idx);
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    /// The tick `key`'s pending timer fires at, if it has one.
    pub fn deadline(&self, key: usize) -> Option<u64> {
        self.pending_index(key).map(|idx| self.nodes[idx].deadline)
    }

    /// The earliest tick at which `advance` could return something (exact or earlier, never
    /// later), for the poll timeout; `None` if no timer is pending. At most 11 word scans.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.nodes[DUE].next != DUE as u32 {
            return Some(self.now);
        }
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Moves time to `now` (monotonic; smaller values are ignored) and appends to `fired`
    /// every key whose deadline is `<= now`, each exactly once, removing them.
    pub fn advance(&mut self, now: u64, fired: &mut Vec<usize>) {
        let now = self.now.max(now);
        self.expire_list(DUE, now, fired);
        // Slots are visited in time order: lower levels always expire first (module docs).
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now {
                break;
            }
            // Stepping to the slot's start keeps the invariant that every filed timer lies
            // ahead of `self.now`, which the cascade below files against.
            self.now = start;
            self.occupied[level] &= !(1 << slot);
            self.expire_list(level * SLOTS + slot, now, fired);
        }
        self.now = now;
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The current tick: the largest value passed to `advance` so far (0 at first).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The node index of `key` if it has a pending timer.
    fn pending_index(&self, key: usize) -> Option<usize> {
        let idx = SENTINELS.checked_add(key)?;
        match self.nodes.get(idx) {
            Some(node) if node.next != NONE => Some(idx),
            _ => None,
        }
    }

    /// The lowest non-empty level's first occupied slot and that slot's start tick.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        // Every occupied slot lies ahead of now's slot on its level, so the lowest bit is the
        // next one to come round; no rotation by now's slot is needed.
        let slot = self.occupied[level].trailing_zeros() as usize;
        debug_assert!(slot > slot_for(self.now, level), "slot behind now");
        Some((level, slot, slot_start(self.now, level, slot)))
    }

    /// Links a detached node into the list its deadline belongs to at the current tick.
    fn file(&mut self, idx: usize) {
        let deadline = self.nodes[idx].deadline;
        let head = if deadline <= self.now {
            DUE
        } else {
            let level = level_for(self.now, deadline);
            let slot = slot_for(deadline, level);
            self.occupied[level] |= 1 << slot;
            level * SLOTS + slot
        };
        let last = self.nodes[head].prev;
        self.nodes[idx].next = head as u32;
        self.nodes[idx].prev = last;
        self.nodes[last as usize].next = idx as u32;
        self.nodes[head].prev = idx as u32;
    }

    /// Unlinks a pending node, clearing its slot's `occupied` bit if the slot is now empty.
    fn unlink(&mut self, idx: usize) {
        let Node { next, prev, .. } = self.nodes[idx];
        self.nodes[prev as usize].next = next;
        self.nodes[next as usize].prev = prev;
        self.nodes[idx].next = NONE;
        self.nodes[idx].prev = NONE;
        // A ring always contains its sentinel, so a ring of one is an empty slot.
        let alone = next as usize;
        if next == prev && alone < DUE {
            self.occupied[alone / SLOTS] &= !(1 << (alone % SLOTS));
        }
    }

    /// Empties the list at sentinel `head`: timers due by `until` fire, the rest are filed
    /// again relative to `self.now` (always on a lower level: the cascade). Firing everything
    /// due by `until`, not just by the slot's start, means a long jump (a shard waking from an
    /// idle poll) touches most timers once instead of once per level.
    fn expire_list(&mut self, head: usize, until: u64, fired: &mut Vec<usize>) {
        let mut cur = self.nodes[head].next as usize;
        self.nodes[head].next = head as u32;
        self.nodes[head].prev = head as u32;
        while cur != head {
            let next = self.nodes[cur].next as usize;
            if self.nodes[cur].deadline <= until {
                self.nodes[cur].next = NONE;
                self.nodes[cur].prev = NONE;
                self.len -= 1;
                fired.push(cur - SENTINELS);
            } else {
                debug_assert!(
                    head == DUE || level_for(self.now, self.nodes[cur].deadline) < head / SLOTS
                );
                self.file(cur);
            }
            cur = next;
        }
    }
}

impl Default for TimerWheel {
    fn default() -> TimerWheel {
        TimerWheel::new()
    }
}

impl fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .field("key_capacity", &(self.nodes.len() - SENTINELS))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The first tick of each level: 64^level.
    fn boundary(level: usize) -> u64 {
        1u64 << (level as u32 * LEVEL_BITS)
    }

    #[test]
    fn level_for_at_every_boundary() {
        assert_eq!(level_for(0, 0), 0);
        assert_eq!(level_for(0, 1), 0);
        assert_eq!(level_for(0, u64::MAX), LEVELS - 1);
        for level in 1..LEVELS {
            let b = boundary(level);
            assert_eq!(level_for(0, b - 1), level - 1, "just below 64^{level}");
            assert_eq!(level_for(0, b), level, "at 64^{level}");
            assert_eq!(level_for(0, b + 1), level, "just above 64^{level}");
            // Crossing a boundary raises the level however close the deadline is.
            assert_eq!(level_for(b - 1, b), level);
            assert_eq!(level_for(b, b + 1), 0);
            // From an unaligned now, level 0 ends at the next multiple of 64, not 64 ms later.
            let now = b + 5;
            assert_eq!(level_for(now, now + 58), 0);
            assert_eq!(level_for(now, now + 59), 1);
            // The last tick before the next level's boundary stays on this level.
            if level + 1 < LEVELS {
                let next = boundary(level + 1);
                assert_eq!(level_for(0, next - 1), level);
                assert_eq!(level_for(next - 1, next), level + 1);
            }
        }
    }

    #[test]
    fn slot_for_at_every_boundary() {
        for level in 1..LEVELS {
            let b = boundary(level);
            assert_eq!(slot_for(b - 1, level - 1), SLOTS - 1);
            assert_eq!(slot_for(b - 1, level), 0);
            assert_eq!(slot_for(b, level), 1);
            assert_eq!(slot_for(b, level - 1), 0);
            assert_eq!(slot_for(b + 1, level), 1);
            assert_eq!(slot_for(b + 1, 0), 1);
        }
        assert_eq!(
            slot_for(u64::MAX, LEVELS - 1),
            15,
            "top level uses 16 slots"
        );
        assert_eq!(slot_for(u64::MAX, 0), SLOTS - 1);
    }

    #[test]
    fn slot_start_at_every_boundary() {
        for level in 0..LEVELS {
            let b = boundary(level);
            // Any now inside the first window: slot s starts at s * 64^level.
            for now in [0, b - 1, b, b + 1] {
                if level_for(0, now) <= level {
                    assert_eq!(slot_start(now, level, 1), b);
                    assert_eq!(slot_start(now, level, 2), 2 * b);
                }
            }
            if level + 1 < LEVELS {
                // In the second window the start moves up by one window.
                let window = boundary(level + 1);
                assert_eq!(slot_start(window + 3, level, 1), window + b);
                assert_eq!(slot_start(window - 1, level, 1), b);
            }
            // A deadline's slot starts at or before the deadline, within one slot width.
            for deadline in [b - 1, b, b + 1, u64::MAX] {
                if level_for(0, deadline) == level {
                    let start = slot_start(0, level, slot_for(deadline, level));
                    assert!(start <= deadline && deadline - start < b);
                }
            }
        }
        assert_eq!(slot_start(u64::MAX - 1, LEVELS - 1, 15), 15 << 60);
    }

    #[test]
    fn insert_replace_cancel_and_deadline() {
        let mut w = TimerWheel::new();
        assert!(w.is_empty() && w.next_deadline().is_none());
        w.insert(3, 100);
        w.insert(3, 40);
        assert_eq!((w.len(), w.deadline(3)), (1, Some(40)));
        assert_eq!(w.next_deadline(), Some(40));
        assert!(w.cancel(3));
        assert!(!w.cancel(3));
        assert!(!w.cancel(1 << 40), "unknown keys are simply not pending");
        assert_eq!((w.len(), w.deadline(3), w.next_deadline()), (0, None, None));
        let mut fired = Vec::new();
        w.advance(1000, &mut fired);
        assert!(fired.is_empty());
        assert_eq!(w.now(), 1000);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance_even_backwards() {
        let mut w = TimerWheel::new();
        let mut fired = Vec::new();
        w.advance(500, &mut fired);
        w.insert(1, 500);
        w.insert(2, 7);
        w.insert(3, 501);
        assert_eq!(w.next_deadline(), Some(500));
        w.advance(10, &mut fired);
        fired.sort_unstable();
        assert_eq!((fired.as_slice(), w.now()), (&[1, 2][..], 500));
        assert_eq!(w.next_deadline(), Some(501));
    }

    #[test]
    fn drain_by_next_deadline_fires_each_key_at_its_exact_tick() {
        let mut deadlines = vec![1, 2, 63, 64, 65, 30_000, 5_000, 10_000, u64::MAX, 1 << 63];
        for level in 1..LEVELS {
            let b = boundary(level);
            deadlines.extend([b - 1, b, b + 1, 3 * b + 17]);
        }
        let mut w = TimerWheel::with_capacity(deadlines.len());
        for (key, &d) in deadlines.iter().enumerate() {
            w.insert(key, d);
        }
        let (mut fired, mut seen, mut steps) = (Vec::new(), 0, 0);
        while let Some(at) = w.next_deadline() {
            assert!(at >= w.now());
            w.advance(at, &mut fired);
            for key in fired.drain(..) {
                assert_eq!(deadlines[key], at, "key {key} fired at {at}");
                seen += 1;
            }
            steps += 1;
            assert!(steps <= deadlines.len() * LEVELS, "no progress");
        }
        assert_eq!(seen, deadlines.len());
        assert_eq!(w.now(), u64::MAX);
    }

    #[test]
    fn one_million_timers() {
        const N: usize = 1_000_000;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut w = TimerWheel::with_capacity(N);
        let mut expected = vec![None; N];
        for (key, slot) in expected.iter_mut().enumerate() {
            let d = 1 + rand() % 4_000_000;
            w.insert(key, d);
            *slot = Some(d);
        }
        // Reschedule a tenth and cancel a tenth, as traffic and closes would.
        for key in (0..N).step_by(10) {
            let d = 1 + rand() % 4_000_000;
            w.insert(key, d);
            expected[key] = Some(d);
            assert!(w.cancel(key + 5));
            expected[key + 5] = None;
        }
        assert_eq!(w.len(), N - N / 10);
        let mut fired = Vec::new();
        let (mut now, mut count) = (0, 0);
        while !w.is_empty() {
            let before = now;
            now += 1 + rand() % 5_000;
            w.advance(now, &mut fired);
            for key in fired.drain(..) {
                let d = expected[key]
                    .take()
                    .expect("fired once, and only if pending");
                assert!(
                    before < d && d <= now,
                    "key {key} due {d} fired in ({before}, {now}]"
                );
                count += 1;
            }
        }
        assert_eq!(count, N - N / 10);
        assert!(expected.iter().all(Option::is_none));
    }

    /// A deadline relative to the wheel's tick at the moment the op runs.
    #[derive(Debug, Clone)]
    enum When {
        Past(u64),
        After(u64),
        Absolute(u64),
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, When),
        Cancel(usize),
        Advance(When),
        AdvanceToNext,
    }

    fn when() -> impl Strategy<Value = When> {
        let near_boundary = (0..LEVELS, -2i64..=2)
            .prop_map(|(l, d)| When::After(boundary(l).saturating_add_signed(d)));
        prop_oneof![
            1 => (0..200u64).prop_map(When::Past),
            4 => (0..100u64).prop_map(When::After),
            4 => (0..100_000u64).prop_map(When::After),
            2 => (0..1u64 << 40).prop_map(When::After),
            2 => near_boundary,
            1 => any::<u64>().prop_map(When::Absolute),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = prop_oneof![8 => 0..32usize, 1 => Just(5_000usize)];
        prop_oneof![
            6 => (key.clone(), when()).prop_map(|(k, w)| Op::Insert(k, w)),
            2 => key.prop_map(Op::Cancel),
            4 => when().prop_map(Op::Advance),
            2 => Just(Op::AdvanceToNext),
        ]
    }

    fn resolve(now: u64, when: &When) -> u64 {
        match *when {
            When::Past(d) => now.saturating_sub(d),
            When::After(d) => now.saturating_add(d),
            When::Absolute(t) => t,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The wheel agrees with a BTreeMap on every fired set, deadline and length, and
        /// `next_deadline` is never later than the true earliest timer.
        #[test]
        fn matches_btreemap_model(ops in proptest::collection::vec(op(), 1..300)) {
            let mut w = TimerWheel::new();
            let mut model: BTreeMap<usize, u64> = BTreeMap::new();
            let mut fired = Vec::new();
            for op in &ops {
                let now = w.now();
                match op {
                    Op::Insert(k, when) => {
                        let d = resolve(now, when);
                        w.insert(*k, d);
                        model.insert(*k, d);
                    }
                    Op::Cancel(k) => prop_assert_eq!(w.cancel(*k), model.remove(k).is_some()),
                    Op::Advance(_) | Op::AdvanceToNext => {
                        let to = match op {
                            Op::Advance(when) => resolve(now, when),
                            _ => w.next_deadline().unwrap_or(now),
                        };
                        w.advance(to, &mut fired);
                        let reached = now.max(to);
                        prop_assert_eq!(w.now(), reached);
                        let mut expected: Vec<usize> =
                            model.iter().filter(|&(_, &d)| d <= reached).map(|(&k, _)| k).collect();
                        model.retain(|_, d| *d > reached);
                        fired.sort_unstable();
                        prop_assert_eq!(&fired, &expected);
                        fired.clear();
                        expected.clear();
                    }
                }
                prop_assert_eq!(w.len(), model.len());
                for k in (0..32).chain([5_000]) {
                    prop_assert_eq!(w.deadline(k), model.get(&k).copied());
                }
                let earliest = model.values().min().map(|&d| d.max(w.now()));
                match (w.next_deadline(), earliest) {
                    (None, None) => {}
                    (Some(next), Some(earliest)) => {
                        prop_assert!(next <= earliest, "next {} > earliest {}", next, earliest);
                        prop_assert!(next >= w.now());
                    }
                    (next, earliest) => prop_assert!(false, "next {:?} vs {:?}", next, earliest),
                }
            }
        }
    }
}
