//! Integration tests: one binary, real sockets, a server per test on a port the kernel picks
//! (or the real binary as a child process), so tests run in parallel.
//!
//! No test asserts that something was fast; every wait has a generous upper bound only so that
//! a broken server fails a test instead of hanging it.

// Shared helpers: in-process server guard, waits, raw frames, tungstenite client, child
// process guard. If you're adding a helper more than one module needs, it goes in here.
mod util;

// Data messages coming back intact: sizes, ordering, fragmentation with control frames
// interleaved. If you're adding something new about what the echo app returns, it probably goes
// in here.
mod echo;

// The HTTP upgrade: each rejection and its status, partial requests, /healthz, subprotocols,
// the handshake timeout. If you're adding something new about the opening handshake, it
// probably goes in here.
mod handshake;

// A table of raw byte transcripts that break RFC 6455 and the close code each must produce. If
// you're adding a new way for a peer to misbehave after the upgrade, it goes in the table here.
mod malformed;

// RFC 6455 conformance cases in the shape of the Autobahn testsuite (categories 1-10) that the
// other modules do not already cover. If you're adding a transcript of an Autobahn case, it
// goes in the table of its category here.
mod rfc_cases;

// The close handshake started by the client. If you're adding something new about how a
// connection ends normally, it probably goes in here.
mod close;

// Pings, pongs, missed pongs and the idle timeout. If you're adding something new about
// liveness or timers on open connections, it probably goes in here.
mod heartbeat;

// Slow consumers and bounded memory. If you're adding something new about send queues or
// backpressure, it probably goes in here.
mod backpressure;

// The broadcast app across shards. If you're adding something new about fan-out, it probably
// goes in here.
mod broadcast;

// Graceful drain on SIGTERM and `Server::drain`. If you're adding something new about shutting
// down, it probably goes in here.
mod drain;

// The command line of the real binary: help, exit codes, the config file. If you're adding a
// new flag or config field, its test probably goes in here.
mod cli;

// Independent clients written elsewhere (Python `websockets`, Node `ws`) driving the server.
// If you're adding a check that another implementation must agree with, it goes in here.
mod interop;

// A real browser (headless Chromium) against the server. If you're adding something browsers
// must be able to do, it goes in here.
mod browser;

// The channel protocol (`--app hub`): ordering, resume, errors, cleanup. If you're adding
// something about channels, subscriptions or history, it goes in here.
mod hub;

// The admin HTTP API (health, readiness, metrics, stats, API key). If you're adding a route or
// a metric, its test probably goes in here.
mod admin_api;

// Admission (origin, JWT before the 101), token grants on channels, expiry and refresh, rate
// limits. If you're adding something about who may connect or what they may do, it goes here.
mod admission;

// Server-sent event streams on the main port (`GET /sse`, `--app hub`): events in order,
// resume with Last-Event-ID, resync, keep-alives, admission and bad requests. If you're
// adding something about event streams, it goes in here.
mod sse;

// Per-channel slow-subscriber policies (disconnect, drop, conflate) and their counters. If
// you're adding something about what happens to a subscriber that cannot keep up on a hub
// channel, it goes in here.
mod slow_policy;

// Presence (join/leave events, the member list, cleanup on every way a connection ends) and
// direct messages to users. If you're adding something about who is in a channel or messages
// to a user, it goes in here.
mod presence;

// Several nodes as real processes on one Redis bus (`--bus redis://…`, a redis-server the test
// starts): fan-out and numbering across nodes, resume on another node, cluster-wide presence
// and dead nodes, Redis lost and back. If you're adding something about what crosses between
// nodes, it goes in here.
mod cluster;
