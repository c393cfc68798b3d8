//! The hand-written reader and writers against `serde_json`, the slow reference: every
//! message the writers produce parses to what was written, and [`read`] agrees with a
//! `serde_json::Value` reading on canonical messages, reordered and spaced ones, extra and
//! missing members, wrong types, and every prefix (truncation) of them.

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

/// What [`read`] should say, worked out from a full `serde_json` parse.
fn reference(msg: &[u8]) -> Inbound<'static> {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(msg) else {
        return Inbound::Other;
    };
    let uint = |v: Option<&Value>| v.and_then(Value::as_u64);
    // A channel name that needed escaping is not one (no valid name does); the inputs here
    // never escape a character that does not need it, so the decoded text tells.
    let plain = |s: &String| !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    if let (Some(Value::String(ch)), Some(seq), Some(data)) =
        (m.get("ch"), uint(m.get("seq")), m.get("data"))
    {
        if !plain(ch) {
            return reply_or_other(&m);
        }
        // The reader borrows the channel; the reference leaks a copy (tests only).
        let channel: &'static [u8] = Box::leak(ch.clone().into_bytes().into_boxed_slice());
        let stamp = data.as_object().and_then(|d| {
            if d.get("s").is_some_and(|s| s.as_u64().is_none()) {
                return None;
            }
            Some(Heard {
                publisher: u32::try_from(uint(d.get("p"))?).ok()?,
                n: uint(d.get("n"))?,
                intended_ns: uint(d.get("t"))?,
                pad: match d.get("pad") {
                    None => 0,
                    Some(Value::String(p)) if plain(p) => p.len(),
                    Some(_) => return None,
                },
            })
        });
        return Inbound::Delivery {
            channel,
            seq,
            stamp,
            data_len: serde_json::to_string(data).unwrap().len(),
        };
    }
    reply_or_other(&m)
}

fn reply_or_other(m: &serde_json::Map<String, Value>) -> Inbound<'static> {
    let uint = |v: Option<&Value>| v.and_then(Value::as_u64);
    match m.get("ok").and_then(Value::as_bool) {
        Some(ok) => Inbound::Reply {
            id: uint(m.get("id")),
            ok,
            seq: uint(m.get("seq")),
        },
        None => Inbound::Other,
    }
}

/// On JSON, [`read`] says what the reference says. On anything else the reader, which is
/// not a validator, may say anything but must not panic, and its fast path must not accept
/// it (the fast path vouches for every byte it takes).
fn agree(msg: &str) {
    let got = read(msg.as_bytes());
    if serde_json::from_str::<Value>(msg).is_ok() {
        let mut want = reference(msg.as_bytes());
        // The reference measures the data re-serialised, without the whitespace a message
        // may have inside it; none of the inputs has whitespace inside a string.
        if let (Inbound::Delivery { data_len: got, .. }, Inbound::Delivery { data_len, .. }) =
            (got, &mut want)
        {
            if msg.bytes().any(|b| b.is_ascii_whitespace()) {
                *data_len = got;
            }
        }
        assert_eq!(got, want, "{msg}");
    } else {
        assert_eq!(fast_delivery(msg.as_bytes()), None, "{msg}");
    }
}

fn stamp(p: u32, n: u64) -> Stamp {
    Stamp {
        publisher: p,
        seq: n,
        intended_ns: 5_072_118_006_431 + n,
        sent_ns: 5_072_118_009_011 + n,
    }
}

/// A delivery as the server builds it around `data`.
fn delivery(ch: &str, seq: u64, data: &[u8]) -> String {
    format!(
        "{{\"ch\":\"{ch}\",\"seq\":{seq},\"data\":{}}}",
        std::str::from_utf8(data).unwrap()
    )
}

#[test]
fn stamps_have_the_asked_size_and_parse_back() {
    for size in [0usize, 1, 32, 60, 64, 65, 100, 1000, 70_000] {
        for (p, n) in [(0, 0), (7, 17), (u32::MAX, u64::MAX)] {
            let s = Stamp {
                publisher: p,
                seq: n,
                intended_ns: n.wrapping_mul(3),
                sent_ns: u64::MAX - n,
            };
            let mut out = b"junk".to_vec();
            write_stamp(&mut out, &s, size);
            let data = &out[4..];
            assert_eq!(data.len(), data_len(&s, size));
            assert!(data.len() == size || data.len() > size && !data.contains(&b'x'));
            let v: Value = serde_json::from_slice(data).unwrap();
            assert_eq!(v["p"], p);
            assert_eq!(v["n"], n);
            assert_eq!(v["t"], s.intended_ns);
            assert_eq!(v["s"], s.sent_ns);
            let msg = delivery("bench.3", 9, data);
            let heard = Heard {
                publisher: p,
                n,
                intended_ns: s.intended_ns,
                pad: data.len() - data_len(&s, 0),
            };
            assert!(heard.sized(data.len(), size));
            if heard.pad > 0 {
                // Padded data one byte off its size is not what was written.
                assert!(!heard.sized(data.len() + 1, size));
                assert!(!heard.sized(data.len() - 1, size));
            }
            let want = Inbound::Delivery {
                channel: b"bench.3",
                seq: 9,
                stamp: Some(heard),
                data_len: data.len(),
            };
            assert_eq!(read(msg.as_bytes()), want);
            assert_eq!(fast_delivery(msg.as_bytes()), Some(want), "fast path taken");
            agree(&msg);
        }
    }
}

#[test]
fn commands_are_what_the_server_parses() {
    let mut out = Vec::new();
    let s = stamp(1, 17);
    write_publish(&mut out, b"bench.2", &s, 64);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["op"], "publish");
    assert_eq!(v["id"], 17);
    assert_eq!(v["channel"], "bench.2");
    assert_eq!(v["data"]["n"], 17);
    assert_eq!(serde_json::to_string(&v["data"]).unwrap().len(), 64);
    out.clear();
    write_subscribe(&mut out, 4, b"bench.0");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v, json!({"op": "subscribe", "id": 4, "channel": "bench.0"}));
}

#[test]
fn replies() {
    for msg in [
        r#"{"id":0,"ok":true,"channel":"bench.3","epoch":"9f2c01ab","seq":41}"#,
        r#"{"id":17,"ok":true,"seq":58}"#,
        r#"{"ok":true}"#,
        r#"{"id":3,"ok":false,"error":{"code":"bad_channel","message":"no \"such\" name"}}"#,
        r#"{"seq":5,"ok":true,"id":2}"#,
    ] {
        agree(msg);
        assert!(
            matches!(read(msg.as_bytes()), Inbound::Reply { .. }),
            "{msg}"
        );
    }
    assert_eq!(
        read(br#"{"id":17,"ok":true,"seq":58}"#),
        Inbound::Reply {
            id: Some(17),
            ok: true,
            seq: Some(58)
        }
    );
}

#[test]
fn other_layouts_take_the_general_path_and_agree() {
    let cases = [
        // Members reordered, spaced, extra members, nested data.
        r#"{"seq":3,"ch":"bench.0","data":{"p":1,"n":2,"t":3,"s":4,"pad":"xx"}}"#,
        r#" { "ch" : "bench.0" , "seq" : 3 , "data" : {"t":3,"n":2,"p":1} } "#,
        r#"{"ch":"bench.0","seq":3,"extra":[1,{"}":"{"}],"data":{"p":1,"n":2,"t":3,"pad":"a\"b"}}"#,
        r#"{"ch":"bench.0","seq":3,"data":{"p":1,"n":2,"t":3,"s":4,"pad":"xx"},"more":true}"#,
        // Data that is not a stamp.
        r#"{"ch":"news","seq":58,"data":"hello"}"#,
        r#"{"ch":"news","seq":58,"data":{"p":-1,"n":2,"t":3}}"#,
        r#"{"ch":"news","seq":58,"data":{"p":4294967296,"n":2,"t":3}}"#,
        r#"{"ch":"news","seq":58,"data":{"p":1,"n":2.5,"t":3}}"#,
        r#"{"ch":"news","seq":58,"data":{"p":1,"n":2,"t":3,"s":"4"}}"#,
        r#"{"ch":"news","seq":58,"data":[1,2]}"#,
        r#"{"ch":"news","seq":58,"data":null}"#,
        // Not deliveries.
        r#"{"ch":"news","seq":-1,"data":1}"#,
        r#"{"ch":"news","seq":1.0,"data":1}"#,
        r#"{"ch":7,"seq":1,"data":1}"#,
        r#"{"ch":"news","data":1}"#,
        r#"{"hello":"world"}"#,
        r#"[1,2,3]"#,
        r#""text""#,
        "",
        "{}",
        r#"{"ok":"yes"}"#,
        r#"{"ch":"bench.0","seq":01,"data":1}"#,
        r#"{"ch":"bench.0","seq":3,"data":{"p":1,"n":2,"t":3,"s":4,"pad":"xx"}} trailing"#,
    ];
    for msg in cases {
        agree(msg);
    }
}

#[test]
fn near_misses_of_the_fast_layout_agree() {
    let mut data = Vec::new();
    write_stamp(&mut data, &stamp(2, 40), 64);
    let canonical = delivery("bench.1", 77, &data);
    // Every truncation, and every single-byte change to a byte that matters to the fast
    // path, must read as the reference reads it.
    for cut in 0..canonical.len() {
        agree(&canonical[..cut]);
    }
    let bytes = canonical.as_bytes();
    for at in 0..bytes.len() {
        for b in [b'"', b'\\', b'}', b'{', b',', b'0', b'9', b' ', b'x', b':'] {
            let mut m = bytes.to_vec();
            m[at] = b;
            if let Ok(s) = std::str::from_utf8(&m) {
                agree(s);
            }
        }
    }
}

#[test]
fn random_messages_agree() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let keys = [
        "ch", "seq", "data", "id", "ok", "p", "n", "t", "s", "pad", "x",
    ];
    let value = |rng: &mut rand::rngs::StdRng, depth: u32| -> String {
        match rng.gen_range(0..9) {
            0 => rng.gen_range(0..u64::MAX).to_string(),
            1 => rng.gen_range(0..100).to_string(),
            2 => format!("\"bench.{}\"", rng.gen_range(0..5)),
            3 => "true".into(),
            4 => "null".into(),
            5 => "\"a\\\"b\"".into(),
            6 if depth == 0 => {
                let mut d = Vec::new();
                write_stamp(
                    &mut d,
                    &stamp(rng.gen_range(0..3), rng.gen_range(0..99)),
                    50,
                );
                String::from_utf8(d).unwrap()
            }
            _ => "-3".into(),
        }
    };
    for _ in 0..20_000 {
        let n = rng.gen_range(0..5);
        let mut members = Vec::new();
        for _ in 0..n {
            let k = keys[rng.gen_range(0..keys.len())];
            let v = value(&mut rng, 0);
            let ws = if rng.gen_bool(0.2) { " " } else { "" };
            members.push(format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"));
        }
        let msg = format!("{{{}}}", members.join(","));
        agree(&msg);
    }
}

#[test]
fn escaped_member_names_are_not_matched() {
    // The one documented difference from a full JSON reader: names are compared as written.
    let msg = br#"{"c\u0068":"bench.0","seq":1,"data":1}"#;
    assert_eq!(read(msg), Inbound::Other);
    assert!(matches!(reference(msg), Inbound::Delivery { .. }));
}

#[test]
fn publishers_take_turns_over_the_channels() {
    let k = 4;
    for p in 0..3u32 {
        let mut next = [0u64; 4];
        for n in 0..100u64 {
            let c = channel_of(p, n, k);
            for other in 0..k {
                let slot = publisher_slot(p, n, other, k);
                if other == c {
                    assert_eq!(slot, Some(next[c as usize]), "p {p} n {n}");
                } else {
                    assert_eq!(slot, None);
                }
            }
            next[c as usize] += 1;
        }
        assert!(next.iter().all(|&x| x == 25));
    }
    assert_eq!(channel_of(5, 9, 1), 0);
    assert_eq!(publisher_slot(5, 9, 0, 1), Some(9));
    assert_eq!(channel_name(3), "bench.3");
}

#[test]
fn the_time_in_a_deliverys_data() {
    for (msg, want) in [
        (r#"{"ch":"news","seq":1,"data":{"t":123}}"#, Some(123)),
        (
            r#"{"ch":"news","seq":1,"data":{"x":[1,{"t":5}], "t" : 77 }}"#,
            Some(77),
        ),
        (
            r#"{"data":{"p":0,"n":0,"t":9,"s":9,"pad":""},"seq":3,"ch":"a"}"#,
            Some(9),
        ),
        (r#"{"ch":"news","seq":1,"data":{"t":-1}}"#, None),
        (r#"{"ch":"news","seq":1,"data":{"t":"5"}}"#, None),
        (r#"{"ch":"news","seq":1,"data":5}"#, None),
        (r#"{"ch":"news","seq":1,"data":{"u":5}}"#, None),
        (r#"{"ch":"news","seq":1}"#, None),
        (r#"{"ch":"news","seq":1,"data":{"t":5}"#, None),
    ] {
        assert_eq!(data_time(msg.as_bytes()), want, "{msg}");
        // Against the reference: serde_json's reading of the same message.
        let v: Option<Value> = serde_json::from_str(msg).ok();
        let reference = v.as_ref().and_then(|v| v["data"]["t"].as_u64());
        assert_eq!(data_time(msg.as_bytes()), reference, "{msg}");
    }
}
