//! The server API's user routes against a hub server with tokens: `GET
//! /channels/{name}/presence`, `POST /users/{id}/disconnect` and `POST /direct`, with and
//! without the key.

use super::*;
use crate::presence::{connect_as, SECRET};
use tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

fn hub_with_tokens() -> Config {
    Config {
        jwt_secret: Some(SECRET.into()),
        ..hub()
    }
}

const KEY: [(&str, &str); 1] = [("Authorization", "Bearer k")];

fn subscribe_as(addr: SocketAddr, user: &str, ch: &str, presence: bool) -> ws::Ws {
    let mut c = connect_as(addr, user);
    let cmd = json!({"op": "subscribe", "id": 1, "channel": ch, "presence": presence});
    c.send(Message::text(cmd.to_string())).unwrap();
    let r = json_of(&ws::next_data(&mut c));
    assert_eq!((r["id"].as_u64(), &r["ok"]), (Some(1), &json!(true)), "{r}");
    c
}

/// Reads until the connection closes; the close frame's code and reason.
fn close_of(ws: &mut ws::Ws) -> (WsCloseCode, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => return (f.code, f.reason.to_string()),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn presence_lists_members_and_needs_the_key() {
    let a = Admin::start(hub_with_tokens(), Some("k"));
    let _subs = [
        subscribe_as(a.ws_addr(), "alice", "chat:room/1", false),
        subscribe_as(a.ws_addr(), "alice", "chat:room/1", false),
        subscribe_as(a.ws_addr(), "bob", "chat:room/1", false),
    ];
    let path = "/channels/chat:room%2F1/presence";
    let r = request(a.api_addr(), "GET", path, &KEY);
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let want = json!({"channel": "chat:room/1", "truncated": false, "members": [
        {"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}]});
    assert_eq!(v, want);
    // Slashes may also be written as they are.
    let r = request(a.api_addr(), "GET", "/channels/chat:room/1/presence", &KEY);
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), want);
    let r = request(a.api_addr(), "GET", "/channels/empty/presence", &KEY);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["members"], json!([]), "{v}");
    assert_eq!(request(a.api_addr(), "GET", path, &[]).status, 401);
    let r = request(a.api_addr(), "GET", "/channels/no%20spaces/presence", &KEY);
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn disconnect_closes_every_connection_of_the_user_with_4000() {
    let a = Admin::start(hub_with_tokens(), Some("k"));
    let mut watcher = subscribe_as(a.ws_addr(), "watcher", "room", true);
    let mut alices = [
        subscribe_as(a.ws_addr(), "alice", "room", false),
        subscribe_as(a.ws_addr(), "alice", "room", false),
    ];
    let mut bob = subscribe_as(a.ws_addr(), "bob", "room", false);
    let joins = [
        json_of(&ws::next_data(&mut watcher)),
        json_of(&ws::next_data(&mut watcher)),
    ];
    assert_eq!(joins[0], json!({"ch": "room", "join": {"user": "alice"}}));
    assert_eq!(joins[1], json!({"ch": "room", "join": {"user": "bob"}}));

    // Without the key nothing happens.
    let r = request(a.api_addr(), "POST", "/users/alice/disconnect", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = request(a.api_addr(), "POST", "/users/alice/disconnect", &KEY);
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, json!({"user": "alice", "disconnected": 2}));
    for ws in &mut alices {
        let (code, reason) = close_of(ws);
        assert_eq!(u16::from(code), 4000);
        assert_eq!(reason, "disconnected by server");
    }
    drop(alices);
    let left = json_of(&ws::next_data(&mut watcher));
    assert_eq!(left, json!({"ch": "room", "leave": {"user": "alice"}}));
    let server = a.server.as_ref().unwrap();
    let counted = wait_until(PATIENCE, || {
        server.counters().closed_for(CloseReason::Disconnected) == 2
    });
    assert!(counted, "{}", server.counters());
    // Bob is untouched; a user with no connections is 0.
    let cmd = json!({"op": "publish", "id": 2, "channel": "room", "data": 1});
    bob.send(Message::text(cmd.to_string())).unwrap();
    let mut got = [
        json_of(&ws::next_data(&mut bob)),
        json_of(&ws::next_data(&mut bob)),
    ];
    got.sort_by_key(|v| v.get("id").is_some());
    assert_eq!(got[0]["ch"], "room", "{got:?}");
    let r = request(a.api_addr(), "POST", "/users/alice/disconnect", &KEY);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["disconnected"], 0, "{v}");
}

#[test]
fn direct_reaches_the_user_without_a_sender() {
    let a = Admin::start(hub_with_tokens(), Some("k"));
    let mut bobs = [
        connect_as(a.ws_addr(), "bob"),
        connect_as(a.ws_addr(), "bob"),
    ];
    let body = br#"{"user":"bob","data":{"alert":  true}}"#;
    let r = request_with_body(a.api_addr(), "POST", "/direct", &[], body);
    assert_eq!(r.status, 401, "{r:?}");
    let r = request_with_body(a.api_addr(), "POST", "/direct", &KEY, body);
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, json!({"user": "bob", "delivered": 2}));
    for b in &mut bobs {
        assert_eq!(text_of(ws::next_data(b)), r#"{"direct":{"alert":  true}}"#);
    }
    let r = request_with_body(a.api_addr(), "POST", "/direct", &KEY, br#"{"data":1}"#);
    assert_eq!(r.status, 400, "{r:?}");
}
