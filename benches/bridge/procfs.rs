//! Per-process memory and CPU readings from /proc.

use std::path::Path;

/// Resident set size now (`VmRSS`) and its peak since the process started
/// (`VmHWM`), in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    pub now_kib: u64,
    pub peak_kib: u64,
}

impl Rss {
    pub fn add(self, other: Rss) -> Rss {
        Rss { now_kib: self.now_kib + other.now_kib, peak_kib: self.peak_kib + other.peak_kib }
    }
}

pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Rss { now_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
}

/// The sum over `pids`; a process that vanished counts as nothing.
pub fn rss_sum(pids: &[u32]) -> Rss {
    pids.iter().filter_map(|pid| rss(*pid)).fold(Rss::default(), Rss::add)
}

/// Proportional set size now (`Pss` of /proc/PID/smaps_rollup), in KiB:
/// each resident page divided by the number of processes mapping it, so
/// the pages a master shares with its workers (code, libraries, memory
/// made before the fork) are counted once over the family, not once per
/// process as in a sum of RSS.
pub fn pss(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The sum of [`pss`] over `pids`; a process that vanished counts as nothing.
pub fn pss_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|pid| pss(*pid)).sum()
}

/// The fields of /proc/PID/stat after the command name; index 0 is field 3
/// (`state`) of proc(5).
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU time of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let fields = stat_fields(Path::new(&path))?;
    // utime and stime are fields 14 and 15 of proc(5).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Processes whose parent is `parent` (nginx's workers).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            stat_fields(Path::new(&format!("/proc/{pid}/stat")))
                .and_then(|fields| fields.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == parent)
        })
        .collect()
}

/// Voluntary context switches of every thread of `pids` so far: each one
/// is a thread going to sleep (in epoll_wait or on a futex) and having to
/// be woken again, the cost a relayed call pays in wake-ups. (Preemptions,
/// the involuntary switches, depend on the machine's load and are left out.)
pub fn context_switches(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}
