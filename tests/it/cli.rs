//! The real binary's command line: `serve --help` documents every flag, bad values and bad
//! config files exit 2 with a message, and a config file is honoured.

use tungstenite::Message;

use crate::util::child::{free_port, run, temp_path, Child};
use crate::util::ws;

/// Every `serve` flag, one per `Config` field plus `--config`.
const FLAGS: &[&str] = &[
    "--config",
    "--listen",
    "--app",
    "--shards",
    "--pin",
    "--max-message-size",
    "--max-header-bytes",
    "--max-backpressure",
    "--protocol",
    "--handshake-timeout",
    "--ping-interval",
    "--pong-timeout",
    "--max-missed-pongs",
    "--idle-timeout",
    "--close-timeout",
    "--drain-timeout",
    "--drain-batch",
    "--drain-interval",
    "--drain-code",
    "--read-buffer-size",
    "--max-connections-per-shard",
    "--stats-interval",
    "--channel-policy",
    "--sse-keepalive",
    "--sweep-interval",
    "--max-presence-members",
];

#[test]
fn serve_help_mentions_every_flag() {
    let (status, out) = run(&["serve", "--help"]);
    assert!(status.success(), "{out}");
    let missing: Vec<&&str> = FLAGS.iter().filter(|f| !out.contains(**f)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in:\n{out}");
}

#[test]
fn drain_help_mentions_every_flag() {
    let (status, out) = run(&["drain", "--help"]);
    assert!(status.success(), "{out}");
    for flag in ["--api", "--api-key", "--batch", "--interval", "--code"] {
        assert!(out.contains(flag), "missing {flag} in:\n{out}");
    }
}

#[test]
fn bad_flag_values_exit_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--shards", "many"], "--shards"),
        (&["serve", "--listen", "not-an-address"], "--listen"),
        (&["serve", "--app", "chat"], "--app"),
        (&["serve", "--ping-interval", "soon"], "--ping-interval"),
        (&["serve", "--no-such-flag"], "--no-such-flag"),
        // Parses, but fails validation.
        (
            &["serve", "--ping-interval", "1s", "--pong-timeout", "2s"],
            "pong_timeout",
        ),
        (&["serve", "--max-message-size", "0"], "max_message_size"),
        (&["serve", "--protocol", "a b"], "protocols"),
        (
            &["serve", "--channel-policy", "log.*=slow"],
            "--channel-policy",
        ),
        (&["serve", "--channel-policy", "log.*"], "--channel-policy"),
        (&["serve", "--sse-keepalive", "0s"], "sse_keepalive"),
        (&["serve", "--sweep-interval", "2s"], "sweep_interval"),
        // A drain closes with "going away" or "service restart", nothing else.
        (&["serve", "--drain-code", "1000"], "drain_code"),
        (&["serve", "--drain-interval", "soon"], "--drain-interval"),
        (&["drain", "--interval", "soon"], "--interval"),
    ];
    for (args, mention) in cases {
        let (status, out) = run(args);
        assert_eq!(status.code(), Some(2), "{args:?}:\n{out}");
        assert!(
            out.contains(mention),
            "{args:?}: message does not name {mention:?}:\n{out}"
        );
    }
}

#[test]
fn bad_config_files_exit_2_with_a_message() {
    let cases = [
        ("unknown field", "lisen = \"127.0.0.1:1\"\n", "lisen"),
        ("not TOML", "this is [not toml\n", "invalid config file"),
        ("wrong type", "shards = \"two\"\n", "shards"),
        (
            "bad duration",
            "ping_interval = \"often\"\n",
            "ping_interval",
        ),
        ("invalid value", "pong_timeout = \"1h\"\n", "pong_timeout"),
        (
            "bad channel policy",
            "channel_policy = [\"a b=drop\"]\n",
            "channel_policy",
        ),
        ("bad drain code", "drain_code = 1011\n", "drain_code"),
    ];
    for (name, text, mention) in cases {
        let path = temp_path("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (status, out) = run(&["serve", "--config", path.to_str().unwrap()]);
        assert_eq!(status.code(), Some(2), "{name}:\n{out}");
        assert!(
            out.contains(mention),
            "{name}: message does not name {mention:?}:\n{out}"
        );
    }
    let (status, out) = run(&["serve", "--config", "/nonexistent/starling.toml"]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("/nonexistent/starling.toml"), "{out}");
}

/// `starling serve --config FILE <extra>` where FILE names a free port, the broadcast app and
/// one shard.
fn serve_from_file(extra: &[&str]) -> Child {
    for _ in 0..5 {
        let port = free_port();
        let path = temp_path("starling.toml");
        let toml = format!("listen = \"127.0.0.1:{port}\"\napp = \"broadcast\"\nshards = 1\n");
        std::fs::write(&path, toml).unwrap();
        let mut args = vec!["serve", "--config", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        if let Some(c) = Child::spawn_listening(&args, port) {
            return c;
        }
    }
    panic!("server from a config file did not start on any of 5 ports");
}

#[test]
fn config_file_is_honoured() {
    // The file names the port and the broadcast app: a message from one client reaching
    // another proves both were used.
    let child = serve_from_file(&[]);
    let mut a = ws::connect(child.addr);
    let mut b = ws::connect(child.addr);
    a.send(Message::text("to everyone")).unwrap();
    assert_eq!(ws::next_data(&mut b), Message::text("to everyone"));
    assert_eq!(ws::next_data(&mut a), Message::text("to everyone"));
}

#[test]
fn flags_override_the_config_file() {
    let child = serve_from_file(&["--app", "echo"]);
    let mut a = ws::connect(child.addr);
    let mut b = ws::connect(child.addr);
    ws::assert_echo(&mut a, Message::text("only for a"));
    ws::assert_echo(&mut b, Message::text("only for b"));
}

#[test]
fn address_in_use_by_another_program_exits_nonzero() {
    // A listener without SO_REUSEPORT blocks the port for everyone else.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (status, out) = run(&["serve", "--listen", &addr]);
    assert_eq!(status.code(), Some(1), "{out}");
}
