//! What the bench reads about processes and the machine from `/proc` (Linux only).

use std::time::Duration;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. Linux reports them in
/// USER_HZ, which is 100 on every architecture it exports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// Resident set size now (`VmRSS`), bytes; `None` once the process is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size over the process's life (`VmHWM`), bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// CPU time used so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / TICKS_PER_SECOND))
}

/// The machine: logical cores and the CPU model.
pub fn machine() -> (usize, String) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    (cores, model)
}

/// The 1-minute load average: other work on the machine skews every figure.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU time the whole machine has spent busy (all cores and processes: user, nice, system, irq,
/// softirq and steal time), from the first line of `/proc/stat`.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Some(Duration::from_secs_f64(busy as f64 / TICKS_PER_SECOND))
}

/// Microseconds of CPU per unit of work: `before`..`after` of a CPU clock over `units`.
pub fn micros_per(before: Option<Duration>, after: Option<Duration>, units: u64) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if units > 0 => a.saturating_sub(b).as_secs_f64() * 1e6 / units as f64,
        _ => 0.0,
    }
}

/// CPU use of a process over an interval, as a percentage of one core.
pub fn cpu_percent(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if !wall.is_zero() => {
            a.saturating_sub(b).as_secs_f64() / wall.as_secs_f64() * 100.0
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(peak_rss_bytes(me).unwrap() >= rss_bytes(me).unwrap() / 2);
        assert!(cpu_time(me).is_some());
        let busy = machine_busy().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(machine_busy().unwrap() > busy, "spinning made the machine busier");
        assert!(machine().0 >= 1);
    }
}
