use serde_json::value::RawValue;

use super::*;
use crate::hub::wire::delivery_frame;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

#[test]
fn query_needs_exactly_one_valid_channel() {
    let q = parse_query("/sse?channel=news&token=abc").unwrap();
    assert_eq!(q.channel, "news");
    assert_eq!(q.last_event_id, None);
    let q = parse_query("/sse?channel=chat%3Aroom%2F42&lastEventId=9f2c01ab%3A7").unwrap();
    assert_eq!(q.channel, "chat:room/42");
    assert_eq!(q.last_event_id.as_deref(), Some("9f2c01ab:7"));
    assert_eq!(parse_query("/sse"), Err(QueryError::NoChannel));
    assert_eq!(parse_query("/sse?token=x"), Err(QueryError::NoChannel));
    assert_eq!(parse_query("/sse?channel="), Err(QueryError::BadChannel));
    assert_eq!(
        parse_query("/sse?channel=a%20b"),
        Err(QueryError::BadChannel)
    );
    assert_eq!(
        parse_query("/sse?channel=a&channel=b"),
        Err(QueryError::SeveralChannels)
    );
    assert!(QueryError::NoChannel
        .response()
        .starts_with(b"HTTP/1.1 400 "));
}

#[test]
fn event_ids_round_trip_and_strangers_are_refused() {
    assert_eq!(parse_event_id("9f2c01ab:41"), Some((0x9f2c01ab, 41)));
    assert_eq!(parse_event_id("9f2c01ab:0"), Some((0x9f2c01ab, 0)));
    for bad in [
        "",
        "9f2c01ab",
        "9f2c01ab:",
        "9f2c01ab:-1",
        "xyz:1",
        "9f2c01ab:1:2",
        ":5",
    ] {
        assert_eq!(parse_event_id(bad), None, "{bad:?}");
    }
}

#[test]
fn delivery_frames_become_events_with_their_ids() {
    let mut frames = delivery_frame("news", 7, &raw("{\"a\":1}")).to_vec();
    frames.extend_from_slice(&delivery_frame("news", 8, &raw("[1,\n2]")));
    // A long one: 16-bit length header.
    let long = format!("\"{}\"", "x".repeat(300));
    frames.extend_from_slice(&delivery_frame("news", 9, &raw(&long)));
    let ev = events(&frames, 0x0000_00ff);
    let want = format!(
        "id: 000000ff:7\nevent: message\ndata: {{\"a\":1}}\n\n\
         id: 000000ff:8\nevent: message\ndata: [1,\ndata: 2]\n\n\
         id: 000000ff:9\nevent: message\ndata: {long}\n\n"
    );
    assert_eq!(std::str::from_utf8(&ev).unwrap(), want);
    assert_eq!(delivery_seq(&frames), Some(7));
}

#[test]
fn line_breaks_of_every_kind_split_data_lines() {
    let mut out = Vec::new();
    push_data(&mut out, b"a\r\nb\rc\nd");
    assert_eq!(out, b"data: a\ndata: b\ndata: c\ndata: d\n");
}

#[test]
fn garbage_is_skipped_without_panicking() {
    let frame = delivery_frame("news", 3, &raw("1"));
    for cut in 0..frame.len() {
        assert!(events(&frame[..cut], 1).is_empty(), "cut at {cut}");
    }
    assert!(events(b"\x81\x05hello", 1).is_empty());
    assert!(events(b"\x82\x00", 1).is_empty());
}

#[test]
fn opening_events_carry_the_resume_point() {
    let fresh = opening_event("news", 1, 57, None, 57);
    assert_eq!(
        std::str::from_utf8(&fresh).unwrap(),
        "id: 00000001:57\nevent: subscribed\n\
         data: {\"ok\":true,\"channel\":\"news\",\"epoch\":\"00000001\",\"seq\":57}\n\n"
    );
    let resumed = String::from_utf8(opening_event("news", 1, 60, Some(true), 58)).unwrap();
    assert!(
        resumed.starts_with("id: 00000001:58\nevent: subscribed\n"),
        "{resumed}"
    );
    let gone = String::from_utf8(opening_event("news", 1, 250, Some(false), 250)).unwrap();
    assert!(
        gone.starts_with("id: 00000001:250\nevent: resync\n"),
        "{gone}"
    );
    assert!(gone.contains("\"resync\":true"), "{gone}");
}

proptest::proptest! {
    /// Request targets and ids come from the network: any string gets an answer, never a
    /// panic, and whatever the server writes as an id reads back as itself.
    #[test]
    fn any_query_or_id_gets_an_answer(path in "\\PC{0,64}", id in "\\PC{0,32}",
                                      epoch in proptest::num::u32::ANY,
                                      seq in proptest::num::u64::ANY) {
        let _ = parse_query(&path);
        let _ = parse_query(&format!("/sse?{path}"));
        let _ = parse_event_id(&id);
        proptest::prop_assert_eq!(parse_event_id(&format!("{epoch:08x}:{seq}")), Some((epoch, seq)));
    }
}

#[test]
fn percent_escapes_name_the_same_channel_and_id() {
    let q = parse_query("/sse?channel=a%2Fb&lastEventId=00000001%3A5").unwrap();
    assert_eq!(q.channel.as_str(), "a/b");
    assert_eq!(q.last_event_id.as_deref(), Some("00000001:5"));
}
