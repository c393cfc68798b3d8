//! Names and payloads in Redis: pure functions, so the layout is tested without a server.
//!
//! Every key of one channel carries the channel name as its hash tag (`{...}`), so in Redis
//! Cluster all of a channel's keys and its pub/sub channel live in one slot and one script can
//! touch them atomically. Channel names cannot contain `{` or `}` (`wire::valid_channel`), so
//! the tag is exactly the name.
//!
//! | what | name |
//! |---|---|
//! | last sequence number (INCR) | `starling:{<ch>}:seq` |
//! | epoch (8 hex digits, set once) | `starling:{<ch>}:epoch` |
//! | history (a stream, `MAXLEN` = history size) | `starling:{<ch>}:hist` |
//! | presence (hash `<node>\x1f<user>` → connections) | `starling:{<ch>}:presence` |
//! | deliveries (pub/sub) | `starling:{<ch>}:msg` |
//! | direct messages to a user (pub/sub) | `starling:user:<user>` |
//! | a node's direct-message tallies (pub/sub) | `starling:reply:<node>` |
//! | node registry (sorted set of ids) | `starling:nodes` |
//! | one node's record (JSON, expires) | `starling:node:<id>` |
//!
//! A delivery on the pub/sub channel is `<epoch> <seq> <keylen> <key><data>`: the epoch as 8
//! hex digits, the sequence number and the conflation key's length in decimal, then the key
//! (empty when the publisher gave none) and the publisher's JSON value, byte for byte.

/// Prefix of every key and pub/sub channel.
pub const PREFIX: &str = "starling";

/// The node registry's sorted set.
pub const NODES: &str = "starling:nodes";

/// Channels whose name starts with this are the bus's own (readiness canaries); clients
/// cannot use them (`#` is not allowed in channel names).
pub const CANARY_PREFIX: &str = "#canary.";

/// Separates the node id from the user id in a presence field.
pub const FIELD_SEP: char = '\x1f';

/// One of a channel's keys: `starling:{<ch>}:<what>`.
pub fn key(channel: &str, what: &str) -> String {
    format!("{PREFIX}:{{{channel}}}:{what}")
}

/// The pub/sub channel carrying `channel`'s deliveries.
pub fn topic(channel: &str) -> String {
    key(channel, "msg")
}

/// The channel a pub/sub topic carries, if it is one of ours.
pub fn channel_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(PREFIX)?.strip_prefix(":{")?;
    let ch = rest.strip_suffix("}:msg")?;
    (!ch.is_empty() && !ch.contains(['{', '}'])).then_some(ch)
}

/// The pub/sub channel of direct messages to `user` (nodes with a connection of the user
/// listen to it, so `PUBLISH` tells how many nodes have one).
pub fn user_topic(user: &str) -> String {
    format!("{PREFIX}:user:{user}")
}

/// The user a direct-message topic is for.
pub fn user_of(topic: &str) -> Option<&str> {
    topic.strip_prefix(PREFIX)?.strip_prefix(":user:")
}

/// The pub/sub channel where other nodes send `node` their direct-message counts.
pub fn reply_topic(node: &str) -> String {
    format!("{PREFIX}:reply:{node}")
}

/// Whether `topic` is a reply topic.
pub fn is_reply(topic: &str) -> bool {
    topic.starts_with("starling:reply:")
}

/// Splits `<word> <rest>` (the direct-message and tally payloads).
pub fn split_word(p: &[u8]) -> Option<(&str, &[u8])> {
    let sp = p.iter().position(|&b| b == b' ')?;
    Some((std::str::from_utf8(&p[..sp]).ok()?, &p[sp + 1..]))
}

/// A node's record key.
pub fn node_key(node: &str) -> String {
    format!("{PREFIX}:node:{node}")
}

/// A presence hash field: which node counts connections of which user.
pub fn presence_field(node: &str, user: &str) -> String {
    format!("{node}{FIELD_SEP}{user}")
}

/// Splits a presence field into (node, user).
pub fn split_field(field: &str) -> Option<(&str, &str)> {
    field.split_once(FIELD_SEP)
}

/// Whether `node` may name a node: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`, so it never holds
/// the field separator or breaks a key.
pub fn valid_node_id(node: &str) -> bool {
    (1..=64).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One delivery as it travels on pub/sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload<'a> {
    /// The channel's epoch.
    pub epoch: u32,
    /// Its sequence number in that epoch.
    pub seq: u64,
    /// The conflation key (empty: none).
    pub key: &'a [u8],
    /// The published JSON value.
    pub data: &'a [u8],
}

/// Reads a pub/sub payload; `None` for anything not written by [`Payload`]'s format.
pub fn parse_payload(p: &[u8]) -> Option<Payload<'_>> {
    let mut rest = p;
    let mut field = || -> Option<&[u8]> {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let (f, r) = rest.split_at(sp);
        rest = &r[1..];
        Some(f)
    };
    let epoch = crate::hub::wire::parse_epoch(std::str::from_utf8(field()?).ok()?)?;
    let seq = decimal(field()?)?;
    let klen = usize::try_from(decimal(field()?)?).ok()?;
    if klen > rest.len() {
        return None;
    }
    let (key, data) = rest.split_at(klen);
    Some(Payload {
        epoch,
        seq,
        key,
        data,
    })
}

/// Encodes a payload (the Lua publish script builds the same bytes; this is for tests).
#[cfg(test)]
pub fn encode_payload(p: &Payload<'_>) -> Vec<u8> {
    let mut out = format!("{} {} {} ", epoch_hex(p.epoch), p.seq, p.key.len()).into_bytes();
    out.extend_from_slice(p.key);
    out.extend_from_slice(p.data);
    out
}

/// An epoch as the wire and Redis write it: 8 lowercase hex digits.
pub fn epoch_hex(epoch: u32) -> String {
    format!("{epoch:08x}")
}

/// A canonical unsigned decimal (no sign, no leading zeros).
fn decimal(s: &[u8]) -> Option<u64> {
    let ok = !s.is_empty() && s.iter().all(u8::is_ascii_digit) && (s == b"0" || s[0] != b'0');
    if !ok {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_as_hash_tag() {
        assert_eq!(key("chat:room/42", "seq"), "starling:{chat:room/42}:seq");
        assert_eq!(topic("news"), "starling:{news}:msg");
        assert_eq!(channel_of("starling:{news}:msg"), Some("news"));
        assert_eq!(channel_of(&topic("a:b}c")), None);
        assert_eq!(channel_of("starling:{}:msg"), None);
        assert_eq!(channel_of("other:{news}:msg"), None);
        assert_eq!(channel_of("starling:{news}:seq"), None);
    }

    #[test]
    fn payload_round_trips_and_rejects_garbage() {
        let p = Payload {
            epoch: 0x9f2c_01ab,
            seq: 41,
            key: b"EUR USD",
            data: br#"{"px":1.08}"#,
        };
        let bytes = encode_payload(&p);
        assert_eq!(bytes, br#"9f2c01ab 41 7 EUR USD{"px":1.08}"#.to_vec());
        assert_eq!(parse_payload(&bytes), Some(p));
        let none = encode_payload(&Payload {
            epoch: 1,
            seq: 0,
            key: b"",
            data: b"null",
        });
        assert_eq!(parse_payload(&none).unwrap().data, b"null");
        for bad in [
            &b""[..],
            b"9f2c01ab 41",
            b"9f2c01ab 41 9 short",
            b"9f2c01a 1 0 1",
            b"9f2c01ab 01 0 1",
            b"9f2c01ab -1 0 1",
            b"9f2c01ab 1 99999999999999999999999 1",
        ] {
            assert_eq!(
                parse_payload(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn node_ids_and_fields() {
        assert!(valid_node_id("node-1.eu_west"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"n".repeat(65)));
        let f = presence_field("n1", "alice\u{1f}x");
        assert_eq!(split_field(&f), Some(("n1", "alice\u{1f}x")));
    }
}
