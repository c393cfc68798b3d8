//! Where each connection comes from and goes to, and whether the box can hold them all.
//!
//! A TCP connection is named by its 4-tuple, so a client can open at most one connection per
//! ephemeral port for each (source address, destination address:port) pair. With
//! `IP_BIND_ADDRESS_NO_PORT` (set in `client.rs` when a source is given) the kernel picks the
//! port at `connect()` time, per 4-tuple, so the budget really is per pair and not per source
//! address. Connection `g` (a global index across threads and processes) uses pair
//! `g mod (sources x targets)`, so every pair gets the same share and a child process needs
//! only its own index range to know its addresses.
//!
//! The checks here run before the first socket is opened: failing half-way with EMFILE or
//! EADDRNOTAVAIL tells the user much less than a refusal that names the limit and the fix.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use starling::sys::LIMITS_HINT;

/// Descriptors a process keeps besides its sockets: stdio, epoll, wakers, files it writes.
pub const FD_RESERVE: u64 = 64;

/// Most source addresses a range may expand to.
const MAX_SOURCES: usize = 65_536;

/// The address pairs connections are spread over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Local addresses to bind; empty means the kernel's choice (one implicit source).
    pub sources: Vec<IpAddr>,
    /// Destinations; at least one.
    pub targets: Vec<SocketAddr>,
}

impl Endpoints {
    /// Source (if any) and the index of the destination in `targets`.
    pub fn pair_index(&self, global: u64) -> (Option<IpAddr>, usize) {
        let t = self.targets.len() as u64;
        let pairs = self.source_count() * t;
        let p = global % pairs;
        let source = self.sources.get((p / t) as usize).copied();
        (source, (p % t) as usize)
    }

    /// How many sources connections are spread over (1 when the kernel chooses).
    pub fn source_count(&self) -> u64 {
        self.sources.len().max(1) as u64
    }

    /// The local port of connection `global` when the load generator picks ports itself
    /// ([`explicit_ports`]): the port at its ordinal on its pair, wrapped into `usable`.
    pub fn local_port(&self, global: u64, usable: &[u16]) -> u16 {
        let pairs = self.source_count() * self.targets.len() as u64;
        usable[((global / pairs) % usable.len().max(1) as u64) as usize]
    }

    /// The most connections any one (source, target) pair receives for `total` connections.
    pub fn per_pair(&self, total: u64) -> u64 {
        total.div_ceil(self.source_count() * self.targets.len() as u64)
    }
}

/// Parses `--source`: an inclusive IPv4 range `127.0.0.1-127.0.0.50` or a comma list of
/// IPv4/IPv6 addresses.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let spec = spec.trim();
    if let Some((lo, hi)) = spec.split_once('-') {
        let lo: Ipv4Addr = lo
            .trim()
            .parse()
            .map_err(|_| format!("--source: `{lo}` is not an IPv4 address"))?;
        let hi: Ipv4Addr = hi
            .trim()
            .parse()
            .map_err(|_| format!("--source: `{hi}` is not an IPv4 address"))?;
        let (lo, hi) = (u32::from(lo), u32::from(hi));
        if lo > hi {
            return Err(format!("--source: range `{spec}` runs backwards"));
        }
        if (hi - lo) as usize >= MAX_SOURCES {
            return Err(format!(
                "--source: range `{spec}` is over {MAX_SOURCES} addresses"
            ));
        }
        return Ok((lo..=hi).map(|a| IpAddr::V4(Ipv4Addr::from(a))).collect());
    }
    let list: Result<Vec<IpAddr>, String> = spec
        .split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| format!("--source: `{a}` is not an IP address"))
        })
        .collect();
    let list = list?;
    if list.is_empty() {
        return Err("--source: no address given".into());
    }
    Ok(list)
}

/// The ports connect() may choose from: `net.ipv4.ip_local_port_range` less
/// `net.ipv4.ip_local_reserved_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpace {
    /// The ephemeral range, inclusive.
    pub lo: u16,
    /// Its last port.
    pub hi: u16,
    /// Reserved ranges (inclusive), as the kernel lists them.
    pub reserved: Vec<(u16, u16)>,
}

impl LocalPorts {
    /// The first and the last port any pair binds.
    pub fn assigned(&self) -> [u16; 2] {
        let last = (self.per_pair as usize).clamp(1, self.usable.len()) - 1;
        [self.usable[0], self.usable[last]]
    }
}

impl PortSpace {
    /// Reads both sysctls; `None` when the range cannot be read.
    pub fn read() -> Option<PortSpace> {
        let (lo, hi) = starling::sys::ephemeral_port_range()?;
        let reserved = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .unwrap_or_default();
        Some(PortSpace {
            lo,
            hi,
            reserved: parse_reserved(&reserved),
        })
    }

    /// A range with nothing reserved.
    #[cfg(test)]
    pub fn range(lo: u16, hi: u16) -> PortSpace {
        PortSpace {
            lo,
            hi,
            reserved: Vec::new(),
        }
    }

    fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }

    /// The ports of the range that are not reserved, in order.
    pub fn usable(&self) -> Vec<u16> {
        (self.lo..=self.hi)
            .filter(|&p| !self.is_reserved(p))
            .collect()
    }

    /// How many ports of the range are not reserved.
    pub fn count(&self) -> u64 {
        (self.lo..=self.hi)
            .filter(|&p| !self.is_reserved(p))
            .count() as u64
    }
}

/// Parses `ip_local_reserved_ports` ("8080,9000-9010", or empty) into inclusive ranges;
/// what does not parse is left out.
pub fn parse_reserved(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            match item.split_once('-') {
                Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
                None => {
                    let p = item.parse().ok()?;
                    Some((p, p))
                }
            }
        })
        .filter(|(a, b)| a <= b)
        .collect()
}

/// Refuses a run that would run out of ephemeral ports on some (source, target) pair.
pub fn check_ports(
    endpoints: &Endpoints,
    total: u64,
    space: Option<&PortSpace>,
) -> Result<(), String> {
    let Some(space) = space else {
        return Ok(());
    };
    let (lo, hi) = (space.lo, space.hi);
    let ports = space.count();
    let need = endpoints.per_pair(total);
    if need <= ports {
        return Ok(());
    }
    let pairs_needed = total.div_ceil(ports.max(1));
    let sources_needed = pairs_needed.div_ceil(endpoints.targets.len() as u64);
    Err(format!(
        "{total} connections over {} source address(es) x {} target(s) need {need} ports per \
         (source, target) pair, but net.ipv4.ip_local_port_range = {lo}-{hi} gives {ports}{}. \
         Spread them over at least {sources_needed} source addresses (e.g. --source \
         127.0.0.1-127.0.0.{}), or more target ports, or widen the range: {LIMITS_HINT}",
        endpoints.source_count(),
        endpoints.targets.len(),
        if space.reserved.is_empty() {
            ""
        } else {
            " (less net.ipv4.ip_local_reserved_ports)"
        },
        sources_needed.min(254),
    ))
}

/// Ports the load generator assigns itself (see [`explicit_ports`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPorts {
    /// The usable ports of the ephemeral range, in order; a pair's `k`-th connection binds
    /// `usable[k]`.
    pub usable: Vec<u16>,
    /// Connections on the busiest pair: it binds `usable[..per_pair]`.
    pub per_pair: u64,
    /// Ports no connection of this run is given (`[first, last]`), for the kernel's choice
    /// when a port of ours is taken: a fallback placed in the planned block would take the
    /// port of a later connection and make it fall back in turn. `None`: the run uses them
    /// all.
    pub spare: Option<(u16, u16)>,
}

/// The ports the load generator assigns itself, when a run passes half of the ephemeral
/// range on some (source, target) pair; `None` leaves the choice to the kernel.
///
/// Linux's connect() picks ports of one parity first (the other half is left for bind());
/// once that half is used towards a destination, every further connect() scans the ports in
/// use before it finds a free one. Measured on loopback against one server: 19,000
/// connections from one address opened at 2.9-3.4k/s with the default 28,232 ports. Binding
/// each socket to a port of its own first (connection `g` takes the `g / pairs`-th usable
/// port on its pair, so no two of this run's connections on one pair share a port, across
/// threads and processes) makes connect() O(1) again: 19.8-24.6k/s in the same minutes.
/// Reserved ports are skipped: the kernel keeps them from its own choice only, an explicit
/// bind() would get them.
pub fn explicit_ports(
    endpoints: &Endpoints,
    total: u64,
    space: Option<&PortSpace>,
) -> Option<LocalPorts> {
    let space = space?;
    let ports = space.count();
    let need = endpoints.per_pair(total);
    if 2 * need <= ports || need > ports {
        return None;
    }
    let usable = space.usable();
    let spare = usable.get(need as usize).map(|&first| (first, space.hi));
    Some(LocalPorts {
        usable,
        per_pair: need,
        spare,
    })
}

/// Refuses a run whose per-process socket count would exceed the open-file limit.
/// `hard` is RLIMIT_NOFILE's hard limit (the soft limit is raised to it at start).
pub fn check_fds(sockets: u64, procs: u64, hard: u64) -> Result<(), String> {
    let per_proc = sockets.div_ceil(procs.max(1));
    if per_proc + FD_RESERVE <= hard {
        return Ok(());
    }
    let usable = hard.saturating_sub(FD_RESERVE).max(1);
    let procs_needed = sockets.div_ceil(usable);
    Err(format!(
        "{per_proc} sockets per process (of {sockets} over {procs} process(es)) need {} open \
         files, but the hard RLIMIT_NOFILE is {hard}. Use --procs {procs_needed} (each process \
         holds up to {usable}), or raise the limit: {LIMITS_HINT}",
        per_proc + FD_RESERVE,
    ))
}

/// The `[start, start + count)` share of `total` items that part `index` of `parts` gets:
/// the first `total % parts` parts get one extra.
pub fn share(total: u64, parts: u64, index: u64) -> (u64, u64) {
    let parts = parts.max(1);
    let base = total / parts;
    let extra = total % parts;
    let count = base + u64::from(index < extra);
    let start = index * base + index.min(extra);
    (start, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(sources: usize, ports: u16) -> Endpoints {
        Endpoints {
            sources: (1..=sources)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
                .collect(),
            targets: (0..ports)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], 9000 + p)))
                .collect(),
        }
    }

    #[test]
    fn ranges_and_lists() {
        let r = parse_sources("127.0.0.1-127.0.0.50").unwrap();
        assert_eq!(r.len(), 50);
        assert_eq!(r[49], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 50)));
        let l = parse_sources("127.0.0.1, 127.0.0.9").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_sources("localhost").is_err());
        assert!(parse_sources("10.0.0.0-10.2.0.0").is_err());
    }

    #[test]
    fn every_pair_gets_an_equal_share() {
        let e = ep(3, 2);
        let mut counts = std::collections::HashMap::new();
        for g in 0..600 {
            *counts.entry(e.pair_index(g)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6);
        assert!(counts.values().all(|&c| c == 100));
        let none = Endpoints {
            sources: vec![],
            targets: ep(0, 1).targets,
        };
        assert_eq!(none.pair_index(7), (None, 0));
    }

    #[test]
    fn port_budget_names_the_limit_and_the_fix() {
        let default = PortSpace::range(32768, 60999);
        let range = Some(&default);
        assert!(check_ports(&ep(0, 1), 28_232, range).is_ok());
        let err = check_ports(&ep(0, 1), 60_000, range).unwrap_err();
        assert!(err.contains("ip_local_port_range"), "{err}");
        assert!(err.contains("sysctl/check"), "{err}");
        assert!(err.contains("--source"), "{err}");
        assert!(check_ports(&ep(0, 4), 60_000, range).is_ok());
        assert!(check_ports(&ep(3, 1), 60_000, range).is_ok());
        assert!(check_ports(&ep(0, 1), 1 << 40, None).is_ok());
        // Reserved ports are not there to be had.
        let reserved = PortSpace {
            reserved: vec![(32768, 32867)],
            ..default.clone()
        };
        assert!(check_ports(&ep(0, 1), 28_132, Some(&reserved)).is_ok());
        let err = check_ports(&ep(0, 1), 28_133, Some(&reserved)).unwrap_err();
        assert!(err.contains("ip_local_reserved_ports"), "{err}");
    }

    #[test]
    fn reserved_ports_parse_as_the_kernel_lists_them() {
        assert_eq!(parse_reserved(""), vec![]);
        assert_eq!(parse_reserved("\n"), vec![]);
        assert_eq!(
            parse_reserved("8080,9000-9010\n"),
            vec![(8080, 8080), (9000, 9010)]
        );
        assert_eq!(parse_reserved("x,5-3,7"), vec![(7, 7)]);
        let s = PortSpace {
            lo: 10,
            hi: 20,
            reserved: vec![(12, 13), (20, 30)],
        };
        assert_eq!(s.usable(), vec![10, 11, 14, 15, 16, 17, 18, 19]);
        assert_eq!(s.count(), 8);
    }

    #[test]
    fn past_half_the_range_ports_are_chosen_here_one_per_connection_of_a_pair() {
        let default = PortSpace::range(32768, 60999);
        let range = Some(&default);
        assert_eq!(explicit_ports(&ep(0, 1), 14_000, range), None);
        let lp = explicit_ports(&ep(0, 1), 19_000, range).unwrap();
        assert_eq!(lp.usable.len(), 28_232);
        assert_eq!(lp.assigned(), [32768, 32768 + 18_999]);
        // The kernel's fallbacks are kept out of the ports planned for this run.
        assert_eq!(lp.spare, Some((32768 + 19_000, 60999)));
        // Spread over four targets, each pair stays under the half.
        assert_eq!(explicit_ports(&ep(0, 4), 19_000, range), None);
        // Refused runs are check_ports' business.
        assert_eq!(explicit_ports(&ep(0, 1), 60_000, range), None);
        assert_eq!(explicit_ports(&ep(0, 1), 19_000, None), None);
        // Every port used: nothing spare.
        assert_eq!(
            explicit_ports(&ep(0, 1), 28_232, range).unwrap().spare,
            None
        );
        // Reserved ports are never handed out.
        let reserved = PortSpace {
            reserved: vec![(32770, 32779)],
            ..default.clone()
        };
        let lp = explicit_ports(&ep(0, 1), 19_000, Some(&reserved)).unwrap();
        assert!(lp.usable.iter().all(|p| !(32770..=32779).contains(p)));
        assert_eq!(ep(0, 1).local_port(2, &lp.usable), 32780);
        // Two sources x three targets: the connections of each pair take distinct ports,
        // and every port of the range once the pair uses them all.
        let e = ep(2, 3);
        let usable = PortSpace::range(40000, 40999).usable();
        let mut seen = std::collections::HashMap::new();
        for g in 0..6 * 1000 {
            let port = e.local_port(g, &usable);
            assert!((40000..=40999).contains(&port));
            assert!(
                seen.insert((e.pair_index(g), port), g).is_none(),
                "connection {g} reuses port {port} on its pair"
            );
        }
        assert_eq!(seen.len(), 6000);
        // Past the range a pair wraps around (check_ports refuses such runs).
        assert_eq!(e.local_port(6 * 1000, &usable), 40000);
    }

    #[test]
    fn fd_budget_suggests_procs() {
        assert!(check_fds(19_000, 1, 20_000).is_ok());
        let err = check_fds(60_000, 1, 20_000).unwrap_err();
        assert!(err.contains("--procs 4"), "{err}");
        assert!(err.contains("RLIMIT_NOFILE"), "{err}");
        assert!(err.contains("sysctl/tune"), "{err}");
        assert!(check_fds(60_000, 4, 20_000).is_ok());
    }

    #[test]
    fn shares_cover_the_whole_without_overlap() {
        for total in [0u64, 1, 7, 100, 101] {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let (start, count) = share(total, parts, i);
                    assert_eq!(start, next);
                    next += count;
                }
                assert_eq!(next, total);
            }
        }
    }
}
