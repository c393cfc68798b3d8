//! Facts about the machine and the server under test, read from `/proc`: the environment a
//! run's figures belong to, CPU time (ours, per core, the server's), and the memory a
//! server spends per connection (its RSS, the kernel's TCP buffers and slab caches).
//!
//! All readers are small parsers over the file's text, so they are tested without the
//! host's values; a file that cannot be read gives `None`, never an error, because a report
//! without one figure is still a report.

use std::collections::BTreeMap;

use serde::Serialize;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    Some(
        read(&path)?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// For `--fastopen`: a warning when net.ipv4.tcp_fastopen lacks the client bit (1), since
/// the kernel then accepts the socket option but sends ordinary SYNs.
pub fn fastopen_note() -> Option<String> {
    fastopen_note_for(sysctl("net.ipv4.tcp_fastopen")?.parse().ok()?)
}

fn fastopen_note_for(value: u32) -> Option<String> {
    (value & 1 == 0).then(|| {
        format!(
            "--fastopen: net.ipv4.tcp_fastopen = {value} has no client bit, so connections \
             use ordinary handshakes (sysctl -w net.ipv4.tcp_fastopen={})",
            value | 1
        )
    })
}

/// The kernel and limits a run happened under.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// `uname -r`.
    pub kernel: Option<String>,
    /// Cores this process may run on.
    pub cores: usize,
    /// RLIMIT_NOFILE soft limit (after raising it) and hard limit.
    pub nofile_soft: u64,
    /// RLIMIT_NOFILE hard limit.
    pub nofile_hard: u64,
    /// The sysctls that bound connection counts and rates.
    pub sysctls: BTreeMap<String, Option<String>>,
}

impl Environment {
    /// Reads the environment now.
    pub fn read(nofile_soft: u64, nofile_hard: u64) -> Environment {
        let names = [
            "fs.file-max",
            "fs.nr_open",
            "net.core.somaxconn",
            "net.core.netdev_max_backlog",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_mem",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.tcp_tw_reuse",
            "net.ipv4.tcp_syncookies",
        ];
        Environment {
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            cores: starling::sys::core_count(),
            nofile_soft,
            nofile_hard,
            sysctls: names.iter().map(|n| (n.to_string(), sysctl(n))).collect(),
        }
    }
}

/// Memory figures of a server and of the kernel at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemSnapshot {
    /// Server resident set (VmRSS), bytes.
    pub server_rss_bytes: Option<u64>,
    /// Sockets the kernel has allocated for TCP (`/proc/net/sockstat` "alloc").
    pub tcp_sockets: Option<u64>,
    /// TCP buffer memory (`/proc/net/sockstat` "mem", pages x page size), bytes.
    pub tcp_mem_bytes: Option<u64>,
    /// All slab caches (active objects x object size), bytes; needs a readable slabinfo.
    pub slab_bytes: Option<u64>,
    /// The caches every socket owns one object of: TCP, sock_inode_cache, filp, dentry,
    /// eventpoll_epi; bytes.
    pub socket_slab_bytes: Option<u64>,
}

impl MemSnapshot {
    /// Reads the server's and the kernel's figures now.
    pub fn read(server_pid: u32) -> MemSnapshot {
        let sock = read("/proc/net/sockstat");
        let slab = read("/proc/slabinfo").map(|s| parse_slabinfo(&s));
        MemSnapshot {
            server_rss_bytes: read(&format!("/proc/{server_pid}/status"))
                .and_then(|s| parse_vmrss(&s)),
            tcp_sockets: sock.as_deref().and_then(|s| sockstat_field(s, "alloc")),
            tcp_mem_bytes: sock
                .as_deref()
                .and_then(|s| sockstat_field(s, "mem"))
                .map(|p| p * page_size()),
            slab_bytes: slab.as_ref().map(|m| m.values().sum()),
            socket_slab_bytes: slab.as_ref().map(|m| {
                ["TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi"]
                    .iter()
                    .filter_map(|k| m.get(*k))
                    .sum()
            }),
        }
    }
}

/// Per-connection memory: the difference of two snapshots over the connections opened.
#[derive(Debug, Clone, Serialize)]
pub struct Density {
    /// Connections open at the `after` snapshot.
    pub connections: u64,
    /// Before the first connection.
    pub before: MemSnapshot,
    /// With every connection open.
    pub after: MemSnapshot,
    /// Server RSS growth per connection (user space).
    pub server_rss_bytes_per_conn: Option<f64>,
    /// TCP buffer growth per connection. On loopback both ends are on this machine, so this
    /// (and the slab figures) count the client's socket too.
    pub kernel_tcp_mem_bytes_per_conn: Option<f64>,
    /// Slab growth per connection, both ends.
    pub kernel_slab_bytes_per_conn: Option<f64>,
    /// Socket-owned slab growth per connection, both ends.
    pub kernel_socket_slab_bytes_per_conn: Option<f64>,
}

impl Density {
    /// Computes the per-connection figures.
    pub fn new(connections: u64, before: MemSnapshot, after: MemSnapshot) -> Density {
        let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if connections > 0 => {
                Some((b as f64 - a as f64) / connections as f64)
            }
            _ => None,
        };
        Density {
            connections,
            server_rss_bytes_per_conn: per(before.server_rss_bytes, after.server_rss_bytes),
            kernel_tcp_mem_bytes_per_conn: per(before.tcp_mem_bytes, after.tcp_mem_bytes),
            kernel_slab_bytes_per_conn: per(before.slab_bytes, after.slab_bytes),
            kernel_socket_slab_bytes_per_conn: per(
                before.socket_slab_bytes,
                after.socket_slab_bytes,
            ),
            before,
            after,
        }
    }
}

/// One CPU's tick counters from /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreTicks {
    /// CPU number.
    pub cpu: usize,
    /// user + nice.
    pub user: u64,
    /// system.
    pub system: u64,
    /// irq + softirq: on loopback, much of the network stack.
    pub irq: u64,
    /// Everything but idle and iowait.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

/// CPU counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    /// This process's user and system seconds (all threads).
    pub user_s: f64,
    /// System seconds.
    pub system_s: f64,
    /// Every CPU's ticks.
    pub cores: Vec<CoreTicks>,
    /// CPUs this process may run on.
    pub ours: Vec<usize>,
    /// The server's user + system seconds, if a pid was given and readable.
    pub server_s: Option<f64>,
    /// When (CLOCK_MONOTONIC ns).
    pub at_ns: u64,
}

/// CPU use between two snapshots.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CpuUse {
    /// Wall seconds.
    pub wall_s: f64,
    /// Our user CPU seconds.
    pub user_s: f64,
    /// Our system CPU seconds.
    pub system_s: f64,
    /// Our CPU seconds per wall second (1.0 = one core fully busy). Softirq work done on our
    /// behalf is not in it when the kernel accounts IRQ time separately: see `cores`.
    pub busy_cores: f64,
    /// Every core of the machine, all processes: on loopback much of the network stack
    /// runs as softirq on the core that sends, so this is where a saturated client shows.
    pub cores: Vec<CoreBusy>,
    /// The server's CPU seconds per wall second.
    pub server_busy_cores: Option<f64>,
}

/// One core's use, as fractions of its time.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CoreBusy {
    /// CPU number.
    pub cpu: usize,
    /// This process may run there.
    pub ours: bool,
    /// Not idle.
    pub busy: f64,
    /// User (and nice).
    pub user: f64,
    /// System.
    pub system: f64,
    /// IRQ and softirq.
    pub irq: f64,
}

impl CpuSnapshot {
    /// Reads our rusage, /proc/stat, and the server's times.
    pub fn read(server_pid: Option<u32>) -> CpuSnapshot {
        let (user_s, system_s) = rusage_self();
        CpuSnapshot {
            user_s,
            system_s,
            cores: read("/proc/stat")
                .map(|s| parse_proc_stat(&s))
                .unwrap_or_default(),
            ours: allowed_cpus(),
            server_s: server_pid.and_then(|p| {
                read(&format!("/proc/{p}/stat")).and_then(|s| parse_pid_stat_seconds(&s))
            }),
            at_ns: crate::clock::now_ns(),
        }
    }

    /// Use between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let wall_s = (later.at_ns.saturating_sub(self.at_ns)) as f64 / 1e9;
        let wall = wall_s.max(1e-9);
        let user_s = later.user_s - self.user_s;
        let system_s = later.system_s - self.system_s;
        CpuUse {
            wall_s,
            user_s,
            system_s,
            busy_cores: (user_s + system_s) / wall,
            cores: later
                .cores
                .iter()
                .filter_map(|b| {
                    let a = self.cores.iter().find(|c| c.cpu == b.cpu)?;
                    let dt = b.total.saturating_sub(a.total).max(1) as f64;
                    let f = |x: u64, y: u64| x.saturating_sub(y) as f64 / dt;
                    Some(CoreBusy {
                        cpu: b.cpu,
                        ours: later.ours.contains(&b.cpu),
                        busy: f(b.busy, a.busy),
                        user: f(b.user, a.user),
                        system: f(b.system, a.system),
                        irq: f(b.irq, a.irq),
                    })
                })
                .collect(),
            server_busy_cores: match (self.server_s, later.server_s) {
                (Some(a), Some(b)) => Some((b - a) / wall),
                _ => None,
            },
        }
    }
}

fn rusage_self() -> (f64, f64) {
    // SAFETY: rusage is plain data for which all-zeroes is valid; getrusage writes exactly
    // one rusage through the pointer, which is valid and writable for the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// The CPUs in this process's affinity mask.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all-zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: pid 0 is the calling thread; `size` is exactly that of `set`, which is valid
    // and writable for the call.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: i < CPU_SETSIZE, so the bit lies inside `set`.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant; no memory arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).unwrap_or(4096)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant; no memory arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `VmRSS:   1234 kB` -> bytes.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A field of the `TCP:` line of /proc/net/sockstat.
fn sockstat_field(s: &str, name: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let i = fields.iter().position(|f| *f == name)?;
    fields.get(i + 1)?.parse().ok()
}

/// /proc/slabinfo -> name -> active objects x object size.
fn parse_slabinfo(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let active: u64 = f.get(1)?.parse().ok()?;
            let size: u64 = f.get(3)?.parse().ok()?;
            Some((f[0].to_owned(), active * size))
        })
        .collect()
}

/// /proc/stat -> the ticks of each `cpuN` line (user nice system idle iowait irq softirq
/// steal ...). Busy excludes idle and iowait.
fn parse_proc_stat(s: &str) -> Vec<CoreTicks> {
    s.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
            if v.len() < 7 {
                return None;
            }
            let total: u64 = v.iter().sum();
            Some(CoreTicks {
                cpu,
                user: v[0] + v[1],
                system: v[2],
                irq: v[5] + v[6],
                busy: total - v[3] - v[4],
                total,
            })
        })
        .collect()
}

/// /proc/PID/stat -> utime + stime in seconds. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted from the last ')'.
fn parse_pid_stat_seconds(s: &str) -> Option<f64> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is f[0], so utime (14) is f[11] and stime (15) f[12].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// This process's resident set, bytes.
pub fn self_rss() -> Option<u64> {
    starling::sys::rss_bytes()
}

#[cfg(test)]
mod tests {

    #[test]
    fn fastopen_note_names_the_missing_client_bit() {
        for ok in [1, 3, 0x401] {
            assert_eq!(fastopen_note_for(ok), None, "{ok}");
        }
        let note = fastopen_note_for(2).expect("server bit only: a warning");
        assert!(
            note.contains("= 2") && note.contains("tcp_fastopen=3"),
            "{note}"
        );
        assert!(fastopen_note_for(0).is_some_and(|n| n.contains("tcp_fastopen=1")));
    }

    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_vmrss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2 << 20));
        let sock = "sockets: used 10\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\n";
        assert_eq!(sockstat_field(sock, "alloc"), Some(7));
        assert_eq!(sockstat_field(sock, "mem"), Some(3));
        let slab = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize>\n\
                    TCP 10 12 2432 13 8 : tunables\nfilp 100 120 256 16 1\n";
        let m = parse_slabinfo(slab);
        assert_eq!(m["TCP"], 24320);
        assert_eq!(m["filp"], 25600);
        let stat = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 10 60 10 4 6 0 0 0\nintr 5\n";
        let want = CoreTicks {
            cpu: 0,
            user: 10,
            system: 10,
            irq: 10,
            busy: 30,
            total: 100,
        };
        assert_eq!(parse_proc_stat(stat), vec![want]);
        let pid = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 300 200 0 0";
        assert_eq!(parse_pid_stat_seconds(pid), Some(500.0 / clock_ticks()));
    }

    #[test]
    fn density_divides_growth_by_connections() {
        let before = MemSnapshot {
            server_rss_bytes: Some(1000),
            tcp_mem_bytes: Some(0),
            ..Default::default()
        };
        let after = MemSnapshot {
            server_rss_bytes: Some(3000),
            tcp_mem_bytes: Some(4096),
            ..Default::default()
        };
        let d = Density::new(2, before, after);
        assert_eq!(d.server_rss_bytes_per_conn, Some(1000.0));
        assert_eq!(d.kernel_tcp_mem_bytes_per_conn, Some(2048.0));
        assert_eq!(d.kernel_slab_bytes_per_conn, None);
    }
}
