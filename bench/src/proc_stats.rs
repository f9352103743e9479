//! Process figures from `/proc`: CPU time and resident memory, so a run can
//! show which side was the bottleneck and what a connection costs.

use std::{fs, io, time::Duration};

/// CPU time and memory of one process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size (user-space pages; socket buffers are kernel
    /// memory and not included).
    pub rss_bytes: u64,
    /// Every core's busy and total time at the same moment (read with the
    /// calling process's sample only).
    pub cores: CoreTimes,
}

/// The most cores [`CoreTimes`] keeps.
pub const MAX_CORES: usize = 64;

/// Busy and total jiffies of each core, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct CoreTimes {
    times: [(u64, u64); MAX_CORES],
    count: usize,
}

impl Default for CoreTimes {
    fn default() -> Self {
        Self {
            times: [(0, 0); MAX_CORES],
            count: 0,
        }
    }
}

impl CoreTimes {
    /// Reads `/proc/stat`: busy is everything but idle and iowait.
    pub fn read() -> io::Result<Self> {
        let stat = fs::read_to_string("/proc/stat")?;
        let mut cores = Self::default();
        for line in stat.lines() {
            let Some(rest) = line.strip_prefix("cpu") else {
                continue;
            };
            if !rest.starts_with(|c: char| c.is_ascii_digit()) || cores.count == MAX_CORES {
                continue;
            }
            let fields: Vec<u64> = rest
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = fields.iter().take(8).sum();
            let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
            cores.times[cores.count] = (total - idle, total);
            cores.count += 1;
        }
        Ok(cores)
    }

    /// Each core's busy fraction, 0 to 1, since `earlier`.
    pub fn busy_since(&self, earlier: &Self) -> Vec<f64> {
        self.times[..self.count]
            .iter()
            .zip(&earlier.times[..earlier.count])
            .map(|(&(busy, total), &(busy_before, total_before))| {
                let total = total.saturating_sub(total_before).max(1);
                busy.saturating_sub(busy_before) as f64 / total as f64
            })
            .collect()
    }
}

impl ProcessSample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn read(pid: u32) -> io::Result<Self> {
        Self::read_path(&format!("/proc/{pid}"))
    }

    /// The calling process, and every core's times.
    pub fn read_self() -> io::Result<Self> {
        let mut sample = Self::read_path("/proc/self")?;
        sample.cores = CoreTimes::read()?;
        Ok(sample)
    }

    fn read_path(dir: &str) -> io::Result<Self> {
        let stat = fs::read_to_string(format!("{dir}/stat"))?;
        // Fields after the command name, which is in parentheses and may
        // contain spaces: utime and stime are fields 14 and 15 overall.
        let after_name = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let clock_ticks = clock_ticks_per_second();
        let cpu_ticks = ticks(11) + ticks(12);
        let cpu = Duration::from_nanos(cpu_ticks * 1_000_000_000 / clock_ticks);
        let status = fs::read_to_string(format!("{dir}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(Self {
            cpu,
            rss_bytes: rss_kib * 1024,
            cores: CoreTimes::default(),
        })
    }

    /// The CPU time of this process's threads whose name starts with
    /// `prefix` (an embedded server's loops); memory is not per thread, so
    /// `rss_bytes` is 0.
    pub fn read_threads(prefix: &str) -> io::Result<Self> {
        let mut cpu = Duration::ZERO;
        for task in fs::read_dir("/proc/self/task")? {
            let dir = task?.path();
            // A thread that exited meanwhile has nothing to add.
            let Ok(name) = fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if name.trim_end().starts_with(prefix)
                && let Ok(sample) = Self::read_path(&dir.display().to_string())
            {
                cpu += sample.cpu;
            }
        }
        Ok(Self {
            cpu,
            rss_bytes: 0,
            cores: CoreTimes::default(),
        })
    }

    /// CPU time used since `earlier`.
    pub fn cpu_since(&self, earlier: &Self) -> Duration {
        self.cpu.saturating_sub(earlier.cpu)
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Raises this process's soft descriptor limit to its hard limit and
/// returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; raising the soft limit up to
        // the hard limit is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}
