//! What the kernel says about the machine and a process: busy CPU time, kernel memory, a
//! process's RSS, `iou-wrk` threads and pipes.

/// Busy CPU seconds of the whole machine so far (user, nice, system, irq, softirq; all CPUs):
/// the proxy, the load generator and the sink together, as the issue asks.
pub(crate) fn cpu_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Kernel memory the connections cost.
pub(crate) struct Meminfo {
    pub(crate) kernel_stack_kib: u64,
    pub(crate) slab_kib: u64,
}

impl Meminfo {
    pub(crate) fn read() -> Self {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            kernel_stack_kib: field("KernelStack:"),
            slab_kib: field("Slab:"),
        }
    }
}

/// A process's footprint.
pub(crate) struct Process {
    pub(crate) rss_kib: u64,
    pub(crate) iou_wrk: u64,
    pub(crate) pipes: u64,
}

impl Process {
    pub(crate) fn read(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let iou_wrk = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                    .filter(|comm| comm.starts_with("iou-wrk"))
                    .count() as u64
            })
            .unwrap_or(0);
        // Each pipe is two descriptors.
        let pipes = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                    .filter(|target| target.to_string_lossy().starts_with("pipe:"))
                    .count() as u64
                    / 2
            })
            .unwrap_or(0);
        Self {
            rss_kib,
            iou_wrk,
            pipes,
        }
    }
}
