//! The Prometheus text exposition format (0.0.4), written by hand: a few helpers, and the
//! standard `process_*` metrics from `/proc`.

use std::fmt::Write;

/// Writes a metric family's HELP and TYPE lines (a counter's `name` ends in `_total`).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline), as the text format requires.
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one sample; `labels` is `k="v",…` or empty.
pub fn sample(out: &mut String, name: &str, labels: &str, v: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {v}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// The standard `process_*` metrics of this process, from /proc (nothing on other systems).
pub fn process(o: &mut String) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the parenthesised command name, which may itself hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23,
    // rss 24 (proc(5)).
    let (utime, stime, start, vsize, rss) = (num(11), num(12), num(19), num(20), num(21));
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    };
    let rows: [(&str, &str, &str, String); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            format!("{}", (utime + stime) as f64 / ticks),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss * page).to_string(),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize.to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors (sockets included).",
            open_fds.to_string(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Limit on open file descriptors.",
            max_fds.to_string(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            format!("{}", boot as f64 + start as f64 / ticks),
        ),
    ];
    for (name, kind, help, v) in rows {
        family(o, name, kind, help);
        sample(o, name, "", v);
    }
}
