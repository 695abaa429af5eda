//! Where the machine's CPU went during a run: the server, the harness (wrk
//! and the push sink), and everything else. The machine may be shared, so a
//! run's figures are only meaningful next to how busy other processes were.

use anyhow::Context;

/// Linux reports these times in USER_HZ ticks, 100 per second on every
/// mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    machine_busy: f64,
    server: f64,
    harness: f64,
    database: f64,
}

/// CPU seconds spent between two snapshots.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub server_s: f64,
    pub harness_s: f64,
    /// Local PostgreSQL processes (SQLite runs inside the server).
    pub database_s: f64,
    pub other_s: f64,
}

impl CpuSnapshot {
    pub fn take(server_pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let cpu: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("cpu "))
            .context("no cpu line in /proc/stat")?
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        anyhow::ensure!(cpu.len() >= 8, "short cpu line in /proc/stat");
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        let machine_busy = (cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu[7]) / TICKS_PER_SECOND;
        let server = process_times(&format!("/proc/{server_pid}/stat"), false)?;
        // Our own time (the sink) plus that of children we have waited for (wrk).
        let harness = process_times("/proc/self/stat", true)?;
        Ok(Self {
            machine_busy,
            server,
            harness,
            database: postgres_times(),
        })
    }

    pub fn since(&self, earlier: &CpuSnapshot) -> CpuUse {
        let server_s = self.server - earlier.server;
        let harness_s = self.harness - earlier.harness;
        // Backends that exited in between take their time with them: never negative.
        let database_s = (self.database - earlier.database).max(0.0);
        let other_s =
            (self.machine_busy - earlier.machine_busy - server_s - harness_s - database_s).max(0.0);
        CpuUse {
            server_s,
            harness_s,
            database_s,
            other_s,
        }
    }
}

/// CPU seconds of every running process named `postgres` (the postmaster and
/// its backends, including the pooled connections of the server under test).
pub fn postgres_times() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(|entry| process_times(&entry.path().join("stat").to_string_lossy(), false).ok())
        .sum()
}

/// utime + stime (+ cutime + cstime) of a `/proc/<pid>/stat` file, in seconds.
fn process_times(path: &str, with_children: bool) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .with_context(|| format!("unexpected {path}"))?;
    let field = |n: usize| -> anyhow::Result<f64> {
        // Field n (1-based, as in proc(5)) is at n - 3 once pid and comm are cut.
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no field {n} in {path}"))
    };
    let mut ticks = field(14)? + field(15)?;
    if with_children {
        ticks += field(16)? + field(17)?;
    }
    Ok(ticks / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_our_own_cpu_time_to_us_and_to_the_machine() {
        let pid = std::process::id();
        let before = CpuSnapshot::take(pid).unwrap();
        // Burn CPU until the kernel has charged us 0.1 s (whatever else runs).
        let mut x = 0u64;
        while process_times("/proc/self/stat", false).unwrap() - before.server < 0.1 {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let after = CpuSnapshot::take(pid).unwrap();
        let used = after.since(&before);
        assert!(used.server_s >= 0.1, "{used:?}");
        // The machine was at least as busy as we were (a tick of rounding aside).
        assert!(
            after.machine_busy - before.machine_busy >= used.server_s - 0.02,
            "{before:?} {after:?}"
        );
    }
}
