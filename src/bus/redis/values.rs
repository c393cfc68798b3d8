//! Reading the fetch script's reply: Redis values into entries.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use crate::bus::{BusState, Entry};
use crate::hub::wire;

/// Reads the fetch script's reply: epoch, last, then (seq, key, data) triples.
pub(super) fn parse_position(v: &[Value], state: &BusState) -> Option<(u32, u64, Vec<Entry>)> {
    let epoch = wire::parse_epoch(std::str::from_utf8(&bytes_of(v.first()?)?).ok()?)?;
    let last = int_of(v.get(1)?)?;
    let mut entries = Vec::with_capacity((v.len() - 2) / 3);
    for t in v[2..].chunks_exact(3) {
        let seq = int_of(&t[0])?;
        let (key, data) = (bytes_of(&t[1])?, bytes_of(&t[2])?);
        match entry(seq, &key, &data) {
            Some(e) => entries.push(e),
            None => {
                state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Some((epoch, last, entries))
}

/// An entry, if `data` is one JSON value and `key` is UTF-8.
pub(super) fn entry(seq: u64, key: &[u8], data: &[u8]) -> Option<Entry> {
    serde_json::from_slice::<&serde_json::value::RawValue>(data).ok()?;
    let key = match key {
        [] => None,
        k => Some(Arc::from(std::str::from_utf8(k).ok()?)),
    };
    Some(Entry {
        seq,
        key,
        data: Bytes::copy_from_slice(data),
    })
}

pub(super) fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fetch_replies_are_read_and_bad_data_is_skipped() {
        let state = BusState::new("n".into(), Duration::from_secs(1));
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = vec![
            b("9f2c01ab"),
            Value::Int(7),
            b("6"),
            b(""),
            b(r#"{"a":1}"#),
            b("7"),
            b("k"),
            b("not json"),
        ];
        let (epoch, last, entries) = parse_position(&reply, &state).unwrap();
        assert_eq!((epoch, last), (0x9f2c_01ab, 7));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 6);
        assert!(entries[0].key.is_none());
        assert_eq!(state.counters.malformed.load(Ordering::Relaxed), 1);
        assert!(parse_position(&[b("zz"), Value::Int(1)], &state).is_none());
    }
}
