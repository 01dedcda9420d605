//! Server CPU time and memory, read from /proc (Linux); summed over the
//! processes of a several-node run.

pub struct Process {
    pids: Vec<u32>,
}

pub struct Sample {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    pub rss_kb: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kb: u64,
}

/// Kernel clock ticks per second for /proc/PID/stat; 100 on every Linux we run on.
const CLK_TCK: f64 = 100.0;

impl Process {
    pub fn new(pids: Vec<u32>) -> Self {
        Process { pids }
    }

    pub fn sample(&self) -> Option<Sample> {
        let mut total = Sample {
            cpu_s: 0.0,
            rss_kb: 0,
            hwm_kb: 0,
        };
        for pid in &self.pids {
            let s = Self::sample_one(*pid)?;
            total.cpu_s += s.cpu_s;
            total.rss_kb += s.rss_kb;
            total.hwm_kb += s.hwm_kb;
        }
        Some(total)
    }

    fn sample_one(pid: u32) -> Option<Sample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).ok()?;
        let kb = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Some(Sample {
            cpu_s: (utime + stime) / CLK_TCK,
            rss_kb: kb("VmRSS:"),
            hwm_kb: kb("VmHWM:"),
        })
    }
}
