//! What every peer server shares: the command line, the listening socket and the
//! single-threaded runtime.
//!
//! Each peer is one binary per WebSocket library, and each runs one of two apps
//! whose meaning is identical across all peers (and Starling):
//!
//! - `echo`: every text or binary message is sent back, unchanged and with the
//!   same opcode, to the connection it came from.
//! - `broadcast`: every text or binary message received from any connection is
//!   sent to every connection that is open at that moment, the sender included.
//!
//! Control frames are handled by the library (pong to ping, close handshake) and
//! are never echoed or broadcast. The runtime is tokio's `current_thread`, so a
//! peer does all its work on one thread and the comparison is one core against
//! one core (`compare.sh` pins that core with `taskset`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Address used when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";

/// Accept queue length asked of the kernel. A fan-out run opens 10,000
/// connections in a burst; tokio's default of 1024 would make the kernel drop
/// SYNs and turn the ramp into retransmission timeouts. The kernel caps it at
/// `net.core.somaxconn`, as it does for every server in the comparison.
const LISTEN_BACKLOG: u32 = 4096;

/// Which application the peer runs; see the module docs for the exact semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// Each message goes back to its sender.
    Echo,
    /// Each message goes to every open connection, the sender included.
    Broadcast,
}

/// The parsed command line.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Which application to run.
    pub app: App,
}

/// A flag one peer takes on top of the shared ones: `FLAG VALUE`, where VALUE is
/// one of `values` and the first of them is the default.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    /// The flag as typed, dashes included: `"--writes"`.
    pub flag: &'static str,
    /// The values it accepts; the first is used when the flag is absent.
    pub values: &'static [&'static str],
}

/// Parses `--listen ADDR` and `--app echo|broadcast` from `std::env::args`.
///
/// Prints usage and exits with status 2 on anything it does not understand, like
/// any command-line tool; there is no network input here.
pub fn parse_args(name: &str) -> Args {
    parse_args_with(name, &[]).0
}

/// Like [`parse_args`], and also reads the peer's own `extra` flags. Returns the
/// value chosen for each of them, in the order of `extra`.
pub fn parse_args_with(name: &str, extra: &[Choice]) -> (Args, Vec<&'static str>) {
    match parse_from(std::env::args().skip(1), extra) {
        Ok(parsed) => parsed,
        Err(msg) => {
            let mut usage = String::from("[--listen ADDR] [--app echo|broadcast]");
            let mut defaults = format!("--listen {DEFAULT_LISTEN} --app echo");
            for c in extra {
                usage += &format!(" [{} {}]", c.flag, c.values.join("|"));
                defaults += &format!(" {} {}", c.flag, c.values.first().unwrap_or(&""));
            }
            eprintln!("{name}: {msg}");
            eprintln!("usage: {name} {usage}");
            eprintln!("       default: {defaults}");
            std::process::exit(2);
        }
    }
}

fn parse_from(
    mut it: impl Iterator<Item = String>,
    extra: &[Choice],
) -> Result<(Args, Vec<&'static str>), String> {
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut app = App::Echo;
    let mut chosen: Vec<&'static str> = extra
        .iter()
        .map(|c| c.values.first().copied().unwrap_or(""))
        .collect();
    while let Some(flag) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value("--listen")?,
            "--app" => {
                app = match value("--app")?.as_str() {
                    "echo" => App::Echo,
                    "broadcast" => App::Broadcast,
                    other => return Err(format!("unknown app {other:?}")),
                }
            }
            "-h" | "--help" => return Err("help".into()),
            other => {
                let Some(i) = extra.iter().position(|c| c.flag == other) else {
                    return Err(format!("unknown argument {other:?}"));
                };
                let v = value(extra[i].flag)?;
                chosen[i] = extra[i]
                    .values
                    .iter()
                    .find(|known| **known == v)
                    .ok_or(format!("unknown {} value {v:?}", extra[i].flag))?;
            }
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("bad --listen {listen:?}: {e}"))?;
    Ok((Args { listen, app }, chosen))
}

/// Builds the one-thread runtime every peer runs on.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Binds the listening socket with `SO_REUSEADDR` (so back-to-back runs do not
/// trip over TIME_WAIT) and a backlog deep enough for a connection burst.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts the next connection, riding out transient failures.
///
/// `EMFILE` and friends must not end the server: a fan-out run sits close to the
/// fd limit, and a refused connection is the right outcome, not a dead process.
/// Nagle is switched off because every peer writes whole frames and flushes on
/// purpose; node's `ws` and Starling do the same.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // A socket that refuses TCP_NODELAY still works, only slower.
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How many messages a broadcast channel holds for a receiver that has fallen
/// behind. A writer further behind than this skips ahead (the load generator
/// counts the skipped messages as gaps) instead of buffering without bound.
pub const BROADCAST_CAPACITY: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_from(args.iter().map(|s| s.to_string()), &[]).map(|(a, _)| a)
    }

    const WRITES: Choice = Choice {
        flag: "--writes",
        values: &["direct", "buffered"],
    };

    fn parse_extra(args: &[&str]) -> Result<(Args, Vec<&'static str>), String> {
        parse_from(args.iter().map(|s| s.to_string()), &[WRITES])
    }

    #[test]
    fn defaults_are_echo_on_9001() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.app, App::Echo);
        assert_eq!(a.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    #[test]
    fn flags_are_read() {
        let a = parse(&["--app", "broadcast", "--listen", "127.0.0.1:1234"]).unwrap();
        assert_eq!(a.app, App::Broadcast);
        assert_eq!(a.listen.port(), 1234);
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse(&["--app", "chat"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nowhere"]).is_err());
        assert!(parse(&["--port", "1"]).is_err());
    }

    #[test]
    fn extra_flag_defaults_to_its_first_value() {
        let (a, chosen) = parse_extra(&["--app", "broadcast"]).unwrap();
        assert_eq!(a.app, App::Broadcast);
        assert_eq!(chosen, ["direct"]);
    }

    #[test]
    fn extra_flag_is_read_among_the_shared_ones() {
        let (a, chosen) =
            parse_extra(&["--writes", "buffered", "--listen", "127.0.0.1:1234"]).unwrap();
        assert_eq!(a.listen.port(), 1234);
        assert_eq!(chosen, ["buffered"]);
    }

    #[test]
    fn extra_flag_refuses_unknown_values_and_other_peers_refuse_it() {
        assert!(parse_extra(&["--writes", "vectored"]).is_err());
        assert!(parse_extra(&["--writes"]).is_err());
        assert!(parse(&["--writes", "direct"]).is_err());
    }
}
