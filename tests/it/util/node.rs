//! Starling nodes of one cluster: each a real `starling serve --app hub --bus <redis> --node-id
//! <id>` child process (`child::Child`: its own ports, killed by PID when dropped) with its
//! admin API on a port of its own, behind [`API_KEY`].
//!
//! Every node runs one shard: the tests are about what crosses between nodes, and several
//! nodes share the test machine's cores with the rest of the suite.

use std::net::{SocketAddr, TcpStream};

use serde_json::{json, Value};

use super::child::{free_port, Child};
use super::http::{request_with_body, try_request, Resp};
use super::redis::Redis;
use super::{wait_until, PATIENCE};

/// The admin API key of every node.
pub const API_KEY: &str = "cluster-test-key";

const AUTH: (&str, &str) = ("Authorization", "Bearer cluster-test-key");

/// One running node.
pub struct Node {
    /// Its `--node-id`.
    pub id: String,
    /// Where its admin API listens.
    pub api: SocketAddr,
    child: Child,
}

impl Node {
    /// Starts a node on the bus `bus` (a `redis://` URL, or `local`) with `extra` flags, once
    /// both its WebSocket port and its admin API accept connections. It need not be ready.
    pub fn start(bus: &str, id: &str, extra: &[&str]) -> Node {
        for _ in 0..5 {
            let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let api_listen = api.to_string();
            let mut args = vec!["--app", "hub", "--shards", "1", "--bus", bus];
            args.extend_from_slice(&["--node-id", id, "--api-listen", &api_listen]);
            args.extend_from_slice(&["--api-key", API_KEY]);
            args.extend_from_slice(extra);
            let mut child = Child::serve(&args);
            let mut exited = false;
            let up = wait_until(PATIENCE, || {
                exited = child.wait_exit(std::time::Duration::ZERO).is_some();
                exited || TcpStream::connect(api).is_ok()
            });
            assert!(!exited, "node {id} exited; log:\n{}", child.log_text());
            if up {
                return Node {
                    id: id.to_owned(),
                    api,
                    child,
                };
            }
            // The API could not bind (the port was taken meanwhile); the node serves without
            // it, which is no use here. Another port.
        }
        panic!("node {id}: the admin API never listened on any of 5 ports");
    }

    /// Where WebSocket clients (and `GET /sse`) connect.
    pub fn addr(&self) -> SocketAddr {
        self.child.addr
    }

    /// `GET path` on the admin API with the key.
    pub fn get(&self, path: &str) -> Resp {
        request_with_body(self.api, "GET", path, &[AUTH], b"")
    }

    /// `GET path`, or an error if the node does not answer (killed, or not up).
    pub fn try_get(&self, path: &str) -> Result<Resp, String> {
        try_request(self.api, "GET", path, &[AUTH], b"")
    }

    /// `POST path` with a JSON body and the key.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        let body = body.to_string();
        request_with_body(self.api, "POST", path, &[AUTH], body.as_bytes())
    }

    /// `POST /publish` of `data` on `channel`; the sequence number it was given.
    pub fn publish(&self, channel: &str, data: &Value) -> u64 {
        let r = self.post("/publish", &json!({"channel": channel, "data": data}));
        assert_eq!(r.status, 200, "node {}: {r:?}", self.id);
        let v = r.json();
        assert_eq!(v["ok"], true, "node {}: {v}", self.id);
        v["results"][0]["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("node {}: no seq in {v}", self.id))
    }

    /// `/readyz`'s status, or None if the node does not answer.
    pub fn readyz(&self) -> Option<u16> {
        self.try_get("/readyz").ok().map(|r| r.status)
    }

    /// Waits until `/readyz` answers `want`; panics with the node's log if it never does.
    pub fn wait_readyz(&self, want: u16) {
        let mut last = None;
        let ok = wait_until(PATIENCE, || {
            last = self.readyz();
            last == Some(want)
        });
        assert!(
            ok,
            "node {}: /readyz never answered {want} (last {last:?}); log:\n{}",
            self.id,
            self.log_text()
        );
    }

    /// `/healthz`'s status, or None if the node does not answer.
    pub fn healthz(&self) -> Option<u16> {
        self.try_get("/healthz").ok().map(|r| r.status)
    }

    /// `GET /nodes`: the ids of the nodes this one knows to be alive, sorted.
    pub fn live_nodes(&self) -> Vec<String> {
        let r = self.get("/nodes");
        assert_eq!(r.status, 200, "node {}: {r:?}", self.id);
        let v = r.json();
        let nodes = v["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("node {}: no nodes in {v}", self.id));
        let mut ids: Vec<String> = nodes
            .iter()
            .map(|n| n["id"].as_str().expect("a node has an id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.wait_exit(std::time::Duration::ZERO).is_none()
    }

    /// Kills the node with SIGKILL (its PID only) and waits until it is gone.
    pub fn kill(&mut self) {
        self.child.signal(libc::SIGKILL);
        assert!(
            self.child.wait_exit(PATIENCE).is_some(),
            "node {} survived SIGKILL",
            self.id
        );
    }

    /// Everything the node wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}

/// `n` nodes (ids `a`, `b`, `c`, …) on `redis`, each with `extra` flags, once every one of them
/// is ready (its bus connected and verified).
pub fn cluster(redis: &Redis, n: usize, extra: &[&str]) -> Vec<Node> {
    let url = redis.url();
    let nodes: Vec<Node> = (0..n)
        .map(|i| {
            let id = char::from(b'a' + i as u8).to_string();
            Node::start(&url, &id, extra)
        })
        .collect();
    for node in &nodes {
        node.wait_readyz(200);
    }
    nodes
}
