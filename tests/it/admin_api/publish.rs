//! The server API's channel routes: `POST /publish` and `GET /channels` against a hub server.

use super::*;

#[test]
fn publish_reaches_a_subscriber_with_the_exact_data() {
    let a = Admin::start(hub(), Some("k"));
    let mut sub = subscriber(a.ws_addr(), &["news"]);
    // Spacing, number spellings and escapes a re-encoding would change.
    let data = r#"{"title": "Hello",  "n":[1.0, 2e3, -0], "s":"caf\u00e9 \"x\""}"#;
    let r = a.publish(true, &format!(r#"{{"channel":"news","data":{data}}}"#));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v,
        json!({"ok": true, "results": [{"channel": "news", "seq": 1}]})
    );
    let got = text_of(ws::next_data(&mut sub));
    assert_eq!(got, format!(r#"{{"ch":"news","seq":1,"data":{data}}}"#));
}

#[test]
fn publish_to_two_channels_reaches_both() {
    let a = Admin::start(hub(), Some("k"));
    let mut both = subscriber(a.ws_addr(), &["a", "b"]);
    let mut only_b = subscriber(a.ws_addr(), &["b"]);
    let r = a.publish(true, r#"{"channels":["a","b","no way"],"data":[1, "two"]}"#);
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ok"], false, "one channel name is invalid: {v}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0], json!({"channel": "a", "seq": 1}));
    assert_eq!(results[1], json!({"channel": "b", "seq": 1}));
    assert_eq!(results[2]["channel"], "no way");
    assert_eq!(results[2]["error"], "bad_channel");
    let mut seen: Vec<String> = (0..2).map(|_| text_of(ws::next_data(&mut both))).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            r#"{"ch":"a","seq":1,"data":[1, "two"]}"#,
            r#"{"ch":"b","seq":1,"data":[1, "two"]}"#,
        ]
    );
    let got = text_of(ws::next_data(&mut only_b));
    assert_eq!(got, r#"{"ch":"b","seq":1,"data":[1, "two"]}"#);
}

#[test]
fn channels_lists_subscriber_counts_by_name() {
    let a = Admin::start(hub(), Some("k"));
    let auth = [("Authorization", "Bearer k")];
    let r = request(a.api_addr(), "GET", "/channels", &auth);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"channels": []})
    );
    // Four clients, on whichever shards the kernel hands them to: counts are summed.
    let _subs: Vec<ws::Ws> = [&["news", "alerts"][..], &["news"], &["news"], &["zeta"]]
        .iter()
        .map(|chs| subscriber(a.ws_addr(), chs))
        .collect();
    let r = request(a.api_addr(), "GET", "/channels", &auth);
    assert_eq!(r.status, 200, "{r:?}");
    let want = json!({"channels": [
        {"name": "alerts", "subscribers": 1},
        {"name": "news", "subscribers": 3},
        {"name": "zeta", "subscribers": 1},
    ]});
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), want);
}

#[test]
fn publish_and_channels_need_the_key() {
    let a = Admin::start(hub(), Some("k"));
    let mut sub = subscriber(a.ws_addr(), &["news"]);
    let r = a.publish(false, r#"{"channel":"news","data":"unauthorized"}"#);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(a.get("/channels").status, 401);
    // Nothing was published: the next delivery is the authorized one, with seq 1.
    assert_eq!(
        a.publish(true, r#"{"channel":"news","data":"ok"}"#).status,
        200
    );
    let got = text_of(ws::next_data(&mut sub));
    assert_eq!(got, r#"{"ch":"news","seq":1,"data":"ok"}"#);
}

#[test]
fn publish_refusals_have_their_status() {
    let a = Admin::start(hub(), Some("k"));
    for body in ["{\"channel\": \"news\", ", "[1]", r#"{"channel":"news"}"#] {
        let r = a.publish(true, body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let v: Value = serde_json::from_str(&r.body).expect("JSON error body");
        assert!(v["error"].is_string(), "{v}");
    }
    // Over 1 MiB: 413 (the data would be a valid JSON string).
    let big = format!(r#"{{"channel":"news","data":"{}"}}"#, "x".repeat(MAX_BODY));
    let r = a.publish(true, &big);
    assert_eq!(r.status, 413, "{}", r.status);
    // GET on a POST route: 405 naming the method it takes.
    let r = request(
        a.api_addr(),
        "GET",
        "/publish",
        &[("Authorization", "Bearer k")],
    );
    assert_eq!(r.status, 405, "{r:?}");
    assert_eq!(r.header("Allow"), Some("POST"));
    // Once draining, publishes are refused.
    a.server.as_ref().unwrap().drain();
    let r = a.publish(true, r#"{"channel":"news","data":1}"#);
    assert_eq!(r.status, 503, "{r:?}");
}

#[test]
fn publish_to_an_echo_server_is_409() {
    let a = Admin::start(util::config(), Some("k"));
    let r = a.publish(true, r#"{"channel":"news","data":1}"#);
    assert_eq!(r.status, 409, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], 409);
    assert!(v["error"].as_str().unwrap().contains("hub"), "{v}");
}
