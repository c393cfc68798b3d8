//! Process and kernel facts read (and, for the open-file limit, raised) at startup: the
//! RLIMIT_NOFILE soft/hard limits, the core count, CPU pinning for shard threads, the
//! ephemeral port range, this process's resident memory, integer socket options that
//! socket2 has no setter for, and a thread's timer slack.
//!
//! Linux only. Everything here is called a handful of times per process (at startup, per
//! shard thread, or per stats snapshot), never on a hot path. Reading `/proc` goes through
//! small pure parsers so the parsing is tested without depending on the host's values.
//! When a limit is too small for the configured connection count, callers log
//! [`LIMITS_HINT`], which names the scripts under `sysctl/` that report and fix it.

use std::io;
use std::mem;

/// What to tell the operator when a kernel or process limit is short.
pub const LIMITS_HINT: &str = "run `sysctl/check --connections N` to see which kernel and \
     process limits are short for N connections, then `sudo sysctl/tune --connections N` to \
     raise them (persistently; `--revert` undoes it)";

/// The RLIMIT_NOFILE values around a [`raise_nofile_limit`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit before the call.
    pub soft_before: u64,
    /// Soft limit after the call (the most sockets plus files this process may hold).
    pub soft: u64,
    /// Hard limit: the ceiling only root (or `sysctl/tune`) can lift.
    pub hard: u64,
}

/// Raises the RLIMIT_NOFILE soft limit to the hard limit; returns the values before and after.
///
/// Each connection is one descriptor, so the default soft limit (often 1024) would cap the
/// engine long before memory does. When the hard limit is "unlimited" the soft limit is raised
/// to `fs.nr_open`, the most the kernel accepts for this resource.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let before = get_nofile()?;
    let target = if before.rlim_max == libc::RLIM_INFINITY {
        read_proc_u64("/proc/sys/fs/nr_open").unwrap_or(before.rlim_cur)
    } else {
        before.rlim_max
    };
    if before.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: before.rlim_max,
        };
        // SAFETY: `raised` is a valid, initialised rlimit that outlives the call; setrlimit
        // only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let after = get_nofile()?;
    Ok(NofileLimit {
        soft_before: before.rlim_cur,
        soft: after.rlim_cur,
        hard: after.rlim_max,
    })
}

/// The current RLIMIT_NOFILE.
fn get_nofile() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit that outlives the call; getrlimit writes
    // exactly one rlimit through the pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// The number of cores this process may run on (affinity mask and cgroup quota included),
/// at least 1. The default shard count.
pub fn core_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `core` (`sched_setaffinity`), so a shard keeps its caches and
/// never migrates. Errors if `core` does not exist or is outside this process's CPU set.
pub fn pin_current_thread(core: usize) -> io::Result<()> {
    let set = cpu_set_of(core)?;
    // SAFETY: pid 0 means the calling thread; `set` is a fully initialised cpu_set_t and the
    // size passed is exactly its size, so the kernel reads only memory we own.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A CPU set holding only `core`, or `InvalidInput` if `core` cannot be expressed in one.
fn cpu_set_of(core: usize) -> io::Result<libc::cpu_set_t> {
    // cpu_set_t is a fixed bitmask of CPU_SETSIZE bits; CPU_SET would index past it.
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "core {core} is out of range (CPU_SETSIZE is {})",
                libc::CPU_SETSIZE
            ),
        ));
    }
    // SAFETY: cpu_set_t is a plain bit array, for which all-zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `core < CPU_SETSIZE` (checked above), so the bit lies inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    Ok(set)
}

/// `net.ipv4.ip_local_port_range`, the source ports available per (source IP, destination),
/// if readable. The load generator divides it into its connection budget.
pub fn ephemeral_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

/// Parses "32768\t60999\n" into `(32768, 60999)`; `None` unless two ordered ports.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace();
    let low = fields.next()?.parse().ok()?;
    let high = fields.next()?.parse().ok()?;
    (fields.next().is_none() && low <= high).then_some((low, high))
}

/// Resident set size of this process in bytes (`/proc/self/statm` pages * page size).
pub fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf only reads a kernel/libc constant; it has no memory arguments.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|&p| p > 0)?;
    parse_statm_resident(&text)?.checked_mul(page)
}

/// The resident page count: the second field of `/proc/self/statm`.
fn parse_statm_resident(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A single-number `/proc/sys` file, such as `fs.nr_open`.
fn read_proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sets the integer socket option `level`/`name` (e.g. `IPPROTO_TCP`/`TCP_FASTOPEN`) on
/// `fd` to `value`: for the options socket2 has no setter for.
pub fn set_int_sockopt(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt only reads `size_of::<c_int>()` bytes from the pointer, which points
    // at `value`, alive for the whole call; a bad fd or option is reported as an error.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's timer slack (how late the kernel may end its sleeps, 50 µs by
/// default) to `ns`, for a thread whose short sleeps must end on time.
pub fn set_thread_timer_slack(ns: u64) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(ns.max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes its value as the second argument and reads no memory.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_slack_is_set_for_the_calling_thread_only() {
        // SAFETY: PR_GET_TIMERSLACK reads no memory; it returns the calling thread's slack.
        let read = || unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
        let mine = read();
        let theirs = std::thread::spawn(move || {
            set_thread_timer_slack(1_000).unwrap();
            read()
        })
        .join()
        .unwrap();
        assert_eq!(theirs, 1_000);
        assert_eq!(read(), mine, "other threads keep theirs");
    }

    #[test]
    fn int_sockopt_is_set_and_a_bad_fd_is_an_error() {
        use std::os::fd::AsRawFd;
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(!sock.nodelay().unwrap());
        set_int_sockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        assert!(sock.nodelay().unwrap());
        let e = set_int_sockopt(-1, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    /// The calling thread's affinity mask.
    fn current_affinity() -> libc::cpu_set_t {
        // SAFETY: all-zeroes is a valid cpu_set_t.
        let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; the size is exactly that of `set`, which the
        // kernel fills.
        let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        set
    }

    #[test]
    fn raise_nofile_reaches_hard_and_getrlimit_agrees() {
        // Lower the soft limit by one first so the raise has work to do, without starving
        // other tests in this process of descriptors.
        let start = get_nofile().unwrap();
        if start.rlim_cur > 1 && start.rlim_max != libc::RLIM_INFINITY {
            let lowered = libc::rlimit {
                rlim_cur: start.rlim_max - 1,
                rlim_max: start.rlim_max,
            };
            // SAFETY: `lowered` is a valid rlimit that outlives the call.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        }
        let limit = raise_nofile_limit().unwrap();
        let now = get_nofile().unwrap();
        assert_eq!((limit.soft, limit.hard), (now.rlim_cur, now.rlim_max));
        assert!(limit.soft >= limit.soft_before);
        if now.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(limit.soft, limit.hard);
            assert_eq!(limit.soft_before, limit.hard - 1);
        }
        // Raising again is a no-op.
        let again = raise_nofile_limit().unwrap();
        assert_eq!((again.soft_before, again.soft), (limit.soft, limit.soft));
    }

    #[test]
    fn core_count_is_positive_and_matches_the_affinity_mask_at_most() {
        let n = core_count();
        assert!(n >= 1);
        // SAFETY: `current_affinity` returns an initialised set.
        let allowed = unsafe { libc::CPU_COUNT(&current_affinity()) };
        assert!(n <= allowed as usize);
    }

    #[test]
    fn pin_to_core_zero_leaves_only_core_zero() {
        // A spawned thread, so the test runner's threads keep their affinity.
        std::thread::spawn(|| {
            pin_current_thread(0).unwrap();
            let set = current_affinity();
            // SAFETY: `set` is initialised and 0 < CPU_SETSIZE.
            let (count, zero) = unsafe { (libc::CPU_COUNT(&set), libc::CPU_ISSET(0, &set)) };
            assert_eq!((count, zero), (1, true));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pin_out_of_range_is_an_error_and_changes_nothing() {
        std::thread::spawn(|| {
            let before = current_affinity();
            let err = pin_current_thread(libc::CPU_SETSIZE as usize).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let err = pin_current_thread(usize::MAX).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            // Expressible but absent: the kernel refuses a mask with no usable CPU.
            let absent = libc::CPU_SETSIZE as usize - 1;
            assert!(absent >= core_count());
            assert!(pin_current_thread(absent).is_err());
            // SAFETY: both sets are initialised.
            assert!(unsafe { libc::CPU_EQUAL(&before, &current_affinity()) });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn port_range_parses_proc_format_and_rejects_junk() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999\t32768\n"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("32768 70000"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range(""), None);
        let (low, high) = ephemeral_port_range().expect("/proc is mounted");
        assert!(low <= high);
    }

    #[test]
    fn rss_is_positive_and_parses_statm() {
        assert_eq!(parse_statm_resident("765 433 404 5 0 123 0\n"), Some(433));
        assert_eq!(parse_statm_resident("765"), None);
        assert_eq!(parse_statm_resident("765 x"), None);
        let rss = rss_bytes().expect("/proc/self/statm is readable");
        assert!(rss > 0);
        // Touching 8 MiB shows up in the resident set.
        let block = std::hint::black_box(vec![1u8; 8 << 20]);
        let grown = rss_bytes().unwrap();
        assert!(grown >= 8 << 20, "rss {grown} below a live 8 MiB block");
        drop(block);
    }

    #[test]
    fn limits_hint_names_the_scripts() {
        assert!(LIMITS_HINT.contains("sysctl/check") && LIMITS_HINT.contains("sysctl/tune"));
    }
}
