//! The hub client's state and what each message from the server does to the counters: per
//! thread, the channel names and one command buffer ([`HubIo`]); per subscriber, its
//! channel, whether the subscription is live, and the server's sequence on that channel
//! ([`Subscription`]).
//!
//! A subscriber checks every delivery twice. The server's `seq` must run on from the number
//! the subscribe reply gave, by one each time: its gaps, duplicates and reorderings are the
//! run's `gaps`, `duplicates` and `reordered`, as the raw mode's are. Each publisher's own
//! `n` must also arrive in the order it was published (one slot per turn over the
//! channels, see [`super::publisher_slot`]): a server that numbered messages in another
//! order than it received them from one publisher shows up there (`hub_pub_*`). Latency
//! runs from the stamp's intended send time.
//!
//! A `connect --subscribe` connection ([`Subscription::on_watched`]) only listens: nobody
//! in the run publishes, so there is no stamp to check, only the server's `seq`, the
//! channel, and a `"t"` in the data to time the delivery from when the publisher put one
//! there.

use hdrhistogram::Histogram;

use super::Inbound;
use crate::stats::{record, Stats};
use crate::workload::{SeqTrack, Tally};

/// Per-thread hub state.
#[derive(Debug)]
pub struct HubIo {
    /// `bench.0 .. bench.{K-1}`, built once.
    pub names: Vec<Box<[u8]>>,
    /// The command being written (publish or subscribe), before it is framed. Reused, so a
    /// publish costs no allocation once it has grown to size.
    pub cmd: Vec<u8>,
    /// `--size`: the stamp's length.
    pub size: usize,
    /// connect --subscribe: deliveries each subscriber waits for (`--count`, default 1);
    /// 0 in fanout.
    pub want: u64,
    /// Deliveries already read, shared by the thread's subscribers.
    pub memo: super::memo::Memo,
}

impl HubIo {
    /// State for `channels` channels and stamps of `size` bytes.
    pub fn new(channels: u32, size: usize) -> HubIo {
        HubIo {
            names: (0..channels.max(1))
                .map(|c| super::channel_name(c).into_bytes().into_boxed_slice())
                .collect(),
            cmd: Vec::with_capacity(size + 128),
            size,
            want: 0,
            memo: Default::default(),
        }
    }

    /// connect --subscribe: the one channel `name`; a subscriber is reached once it has
    /// heard `want` deliveries.
    pub fn watch(name: &str, want: u64) -> HubIo {
        HubIo {
            names: vec![name.as_bytes().into()],
            cmd: Vec::with_capacity(name.len() + 64),
            size: 0,
            want,
            memo: Default::default(),
        }
    }

    /// K.
    pub fn channels(&self) -> u32 {
        self.names.len() as u32
    }
}

/// What a subscriber's message handler may touch.
pub struct Rx<'a> {
    /// The thread's counters.
    pub stats: &'a mut Stats,
    /// Latency since the last tick.
    pub interval: &'a mut Histogram<u64>,
    /// When the event is handled.
    pub now: u64,
    /// In the measured phase.
    pub measuring: bool,
    /// Channel names, `--size` and the read deliveries.
    pub hub: &'a mut HubIo,
}

/// One subscriber's subscription.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subscription {
    /// Its channel.
    pub channel: u32,
    /// The server said `ok` with a sequence number.
    pub live: bool,
    /// The server's sequence on the channel.
    seq: SeqTrack,
}

impl Subscription {
    /// A subscription to `channel`, not yet asked for.
    pub fn new(channel: u32) -> Subscription {
        Subscription {
            channel,
            ..Subscription::default()
        }
    }

    /// One message on the subscriber's connection. `pending`: the subscribe reply has not
    /// come yet. Returns whether this message was that reply (the caller then moves the
    /// connection on, whether the server said yes or no; a no is counted here).
    pub fn on_message(
        &mut self,
        msg: &[u8],
        pending: bool,
        seqs: &mut [SeqTrack],
        rx: &mut Rx<'_>,
    ) -> bool {
        let inbound = rx.hub.memo.read(msg);
        let c = &mut rx.stats.c;
        match inbound {
            Inbound::Reply { ok, seq, .. } if pending => {
                self.on_reply(ok, seq, c);
                true
            }
            Inbound::Delivery {
                channel,
                seq,
                stamp,
                data_len,
            } if self.live => {
                if !self.count_delivery(channel, seq, rx) {
                    return false;
                }
                let c = &mut rx.stats.c;
                let Some(s) = stamp.filter(|s| s.sized(data_len, rx.hub.size)) else {
                    c.mismatches += 1;
                    return false;
                };
                let slot = super::publisher_slot(s.publisher, s.n, self.channel, rx.hub.channels());
                match (seqs.get_mut(s.publisher as usize), slot) {
                    (Some(track), Some(slot)) => {
                        record(rx.interval, rx.now.saturating_sub(s.intended_ns), 1);
                        Tally {
                            gaps: &mut c.hub_pub_gaps,
                            duplicates: &mut c.hub_pub_duplicates,
                            reordered: &mut c.hub_pub_reordered,
                        }
                        .count(track.arrive(slot));
                    }
                    _ => c.mismatches += 1,
                }
                false
            }
            _ => {
                c.foreign += 1;
                false
            }
        }
    }

    /// connect --subscribe: one message on a listening connection; returns whether it was
    /// the subscribe reply, as [`Self::on_message`] does. A delivery on the channel is
    /// counted, its `seq` checked to run on from the reply's, and timed from the `"t"` in its
    /// data when there is one ([`super::data_time`]). `heard` is the connection's own count
    /// of deliveries; the one that brings it to `want` counts the subscriber as reached.
    pub fn on_watched(
        &mut self,
        msg: &[u8],
        pending: bool,
        heard: &mut u64,
        rx: &mut Rx<'_>,
    ) -> bool {
        let c = &mut rx.stats.c;
        match super::read(msg) {
            Inbound::Reply { ok, seq, .. } if pending => {
                self.on_reply(ok, seq, c);
                if self.live {
                    c.watchers_subscribed += 1;
                }
                true
            }
            Inbound::Delivery { channel, seq, .. } if self.live => {
                if !self.count_delivery(channel, seq, rx) {
                    return false;
                }
                let c = &mut rx.stats.c;
                *heard += 1;
                if *heard == rx.hub.want {
                    c.watchers_reached += 1;
                }
                if let Some(t) = super::data_time(msg) {
                    record(rx.interval, rx.now.saturating_sub(t), 1);
                }
                false
            }
            _ => {
                c.foreign += 1;
                false
            }
        }
    }

    /// The answer to our subscribe: live from the sequence number it gives, or refused.
    /// A delivery on a live subscription: on its channel (else a mismatch, false), counted,
    /// and its `seq` checked against the last one.
    fn count_delivery(&mut self, channel: &[u8], seq: u64, rx: &mut Rx<'_>) -> bool {
        let c = &mut rx.stats.c;
        if !crate::workload::same(channel, &rx.hub.names[self.channel as usize]) {
            c.mismatches += 1;
            return false;
        }
        c.deliveries += 1;
        if rx.measuring {
            c.measured_deliveries += 1;
        }
        Tally {
            gaps: &mut c.gaps,
            duplicates: &mut c.duplicates,
            reordered: &mut c.reordered,
        }
        .count(self.seq.arrive(seq));
        true
    }

    fn on_reply(&mut self, ok: bool, seq: Option<u64>, c: &mut crate::stats::Counters) {
        match (ok, seq) {
            (true, Some(seq)) => {
                self.live = true;
                self.seq = SeqTrack::starting_at(seq + 1);
            }
            _ => c.hub_subscribe_errors += 1,
        }
    }
}

/// One message on a publisher's connection: the reply to one of its publishes.
pub fn on_publisher_message(msg: &[u8], stats: &mut Stats) {
    match super::read(msg) {
        Inbound::Reply {
            ok: true,
            seq: Some(_),
            ..
        } => stats.c.hub_acks += 1,
        Inbound::Reply { .. } => stats.c.hub_publish_errors += 1,
        _ => stats.c.foreign += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;
    use crate::workload::Stamp;

    struct Sub {
        stats: Stats,
        interval: Histogram<u64>,
        hub: HubIo,
        sub: Subscription,
        seqs: Vec<SeqTrack>,
    }

    impl Sub {
        /// A subscriber of channel `c` of 3, with 2 publishers.
        fn new(c: u32) -> Sub {
            Sub {
                stats: Stats::default(),
                interval: new_histogram(),
                hub: HubIo::new(3, 64),
                sub: Subscription::new(c),
                seqs: vec![SeqTrack::default(); 2],
            }
        }

        fn feed(&mut self, msg: &[u8], pending: bool) -> bool {
            let mut rx = Rx {
                stats: &mut self.stats,
                interval: &mut self.interval,
                now: 1_000_000,
                measuring: true,
                hub: &mut self.hub,
            };
            self.sub.on_message(msg, pending, &mut self.seqs, &mut rx)
        }

        /// The delivery of publisher `p`'s message `n` under server number `seq`.
        fn deliver(&mut self, seq: u64, p: u32, n: u64) {
            let s = Stamp {
                publisher: p,
                seq: n,
                intended_ns: 400_000,
                sent_ns: 400_100,
            };
            let mut data = Vec::new();
            super::super::write_stamp(&mut data, &s, 64);
            let ch = super::super::channel_of(p, n, 3);
            let mut msg = format!("{{\"ch\":\"bench.{ch}\",\"seq\":{seq},\"data\":").into_bytes();
            msg.extend_from_slice(&data);
            msg.push(b'}');
            assert!(!self.feed(&msg, false));
        }
    }

    #[test]
    fn a_clean_stream_after_the_reply() {
        let mut t = Sub::new(1);
        assert!(t.feed(
            br#"{"id":0,"ok":true,"channel":"bench.1","epoch":"00000001","seq":40}"#,
            true
        ));
        assert!(t.sub.live);
        // Channel 1 of 3 gets p0's n = 1, 4, 7 ... and p1's n = 0, 3, 6 ...
        let mut seq = 41;
        for turn in 0..10u64 {
            t.deliver(seq, 0, 1 + 3 * turn);
            t.deliver(seq + 1, 1, 3 * turn);
            seq += 2;
        }
        let c = &t.stats.c;
        assert_eq!(c.deliveries, 20);
        assert_eq!(
            (c.gaps, c.duplicates, c.reordered, c.mismatches, c.foreign),
            (0, 0, 0, 0, 0)
        );
        assert_eq!(
            (c.hub_pub_gaps, c.hub_pub_duplicates, c.hub_pub_reordered),
            (0, 0, 0)
        );
        assert_eq!(t.interval.len(), 20);
        assert!(t.interval.equivalent(t.interval.max(), 600_000));
    }

    #[test]
    fn server_numbers_and_publisher_numbers_are_both_checked() {
        let mut t = Sub::new(0);
        assert!(t.feed(br#"{"id":0,"ok":true,"seq":0}"#, true));
        t.deliver(1, 0, 0);
        t.deliver(3, 0, 3); // server skipped 2
        t.deliver(3, 0, 3); // and repeats 3
        t.deliver(4, 0, 9); // p0 skipped n = 6
        t.deliver(5, 0, 6); // n = 6 arrives late
        let c = &t.stats.c;
        assert_eq!((c.gaps, c.duplicates, c.reordered), (1, 1, 0));
        assert_eq!(
            (c.hub_pub_gaps, c.hub_pub_duplicates, c.hub_pub_reordered),
            (0, 1, 1)
        );
        // A delivery of a message that was published to another channel.
        t.deliver(6, 0, 1);
        assert_eq!(t.stats.c.mismatches, 1);
    }

    #[test]
    fn a_listener_counts_times_and_checks_what_arrives() {
        let mut stats = Stats::default();
        let mut interval = new_histogram();
        let mut hub = HubIo::watch("room:1", 2);
        let mut sub = Subscription::new(0);
        let mut heard = 0;
        let mut feed = |sub: &mut Subscription, msg: &str, pending: bool, heard: &mut u64| {
            let mut rx = Rx {
                stats: &mut stats,
                interval: &mut interval,
                now: 1_000_000,
                measuring: true,
                hub: &mut hub,
            };
            sub.on_watched(msg.as_bytes(), pending, heard, &mut rx)
        };
        // Before the reply nothing is ours; the reply makes it live from seq 7.
        assert!(!feed(
            &mut sub,
            r#"{"ch":"room:1","seq":7,"data":1}"#,
            false,
            &mut heard
        ));
        assert!(feed(
            &mut sub,
            r#"{"id":0,"ok":true,"seq":7}"#,
            true,
            &mut heard
        ));
        assert!(sub.live);
        // Timed from "t" when there is one, counted either way.
        assert!(!feed(
            &mut sub,
            r#"{"ch":"room:1","seq":8,"data":{"t":400000}}"#,
            false,
            &mut heard
        ));
        assert!(!feed(
            &mut sub,
            r#"{"ch":"room:1","seq":10,"data":"hi"}"#,
            false,
            &mut heard
        ));
        // Another channel's delivery is a mismatch and not heard.
        assert!(!feed(
            &mut sub,
            r#"{"ch":"room:2","seq":11,"data":{"t":1}}"#,
            false,
            &mut heard
        ));
        let c = &stats.c;
        assert_eq!(
            (
                c.watchers_subscribed,
                c.deliveries,
                c.watchers_reached,
                heard
            ),
            (1, 2, 1, 2)
        );
        assert_eq!(
            (c.gaps, c.duplicates, c.mismatches, c.foreign),
            (1, 0, 1, 1)
        );
        assert_eq!(interval.len(), 1);
        assert!(interval.equivalent(interval.max(), 600_000));
        // A refusal is counted and leaves it not live.
        let mut refused = Subscription::new(0);
        let mut rx = Rx {
            stats: &mut stats,
            interval: &mut interval,
            now: 0,
            measuring: false,
            hub: &mut hub,
        };
        assert!(refused.on_watched(br#"{"id":0,"ok":false,"error":{}}"#, true, &mut 0, &mut rx));
        assert!(!refused.live);
        assert_eq!(
            (stats.c.hub_subscribe_errors, stats.c.watchers_subscribed),
            (1, 1)
        );
    }

    #[test]
    fn refusals_foreign_messages_and_the_wrong_channel() {
        let mut t = Sub::new(2);
        assert!(t.feed(
            br#"{"id":0,"ok":false,"error":{"code":"forbidden","message":"no"}}"#,
            true
        ));
        assert!(!t.sub.live);
        assert_eq!(t.stats.errors(), 1);
        // Not subscribed: a delivery is not ours.
        assert!(!t.feed(br#"{"ch":"bench.2","seq":1,"data":1}"#, false));
        assert_eq!(t.stats.c.foreign, 1);
        let mut t = Sub::new(2);
        assert!(t.feed(br#"{"id":0,"ok":true,"seq":7}"#, true));
        assert!(!t.feed(br#"{"ch":"bench.1","seq":8,"data":1}"#, false));
        assert!(!t.feed(br#"{"ch":"bench.2","seq":8,"data":1}"#, false));
        assert_eq!((t.stats.c.mismatches, t.stats.c.deliveries), (2, 1));
        let mut stats = Stats::default();
        on_publisher_message(br#"{"id":1,"ok":true,"seq":9}"#, &mut stats);
        on_publisher_message(br#"{"id":2,"ok":true}"#, &mut stats);
        on_publisher_message(br#"{"id":3,"ok":false,"error":{}}"#, &mut stats);
        on_publisher_message(br#"{"ch":"bench.2","seq":8,"data":1}"#, &mut stats);
        assert_eq!(
            (
                stats.c.hub_acks,
                stats.c.hub_publish_errors,
                stats.c.foreign
            ),
            (1, 2, 1)
        );
    }
}
