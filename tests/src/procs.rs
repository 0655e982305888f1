//! Looking at a live program from the outside: its threads' states, what the
//! driver may have left in it, and one-line kvstore requests. Shared by the
//! tests that interrupt, overlap or cancel dumps.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::check::preload::{preload_key, preload_value};

/// A field of `/proc/PID/task/TID/status`, trimmed.
pub fn status_field(pid: u32, tid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
}

/// TracerPid of the main thread; `None` when the process is gone.
pub fn tracer(pid: u32) -> Option<u32> {
    status_field(pid, pid, "TracerPid:").and_then(|v| v.parse().ok())
}

/// The thread ids of `pid`.
pub fn tids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// Waits (up to 5 s) until `pid` is gone or a zombie (its sockets are closed by
/// then, so its address can be bound again).
pub fn wait_gone(pid: u32) {
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads that are stopped, traced or dead: (tid, state, tracer). `None` when
/// the process is gone.
pub fn unhealthy_threads(pid: u32) -> Option<Vec<(u32, String, String)>> {
    let mut bad = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let state = status_field(pid, tid, "State:").unwrap_or_default();
        let tr = status_field(pid, tid, "TracerPid:").unwrap_or_default();
        let code = state.chars().next().unwrap_or('?');
        if matches!(code, 't' | 'T' | 'Z' | 'X') || tr != "0" {
            bad.push((tid, state, tr));
        }
    }
    Some(bad)
}

/// Writable and executable mappings (the driver's scratch page is the only one a
/// Go program would have).
pub fn rwx_mappings(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("rwxp"))
        .map(str::to_string)
        .collect()
}

/// How many of the program's fds are userfaultfds.
pub fn uffd_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().contains("userfaultfd"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// `GET key` on one connection as the anonymous client 0; the value, or why not.
pub fn kv_get(addr: &str, key: &str, timeout: Duration) -> Result<Option<String>, String> {
    let reply = kv_request(addr, &format!("GET {key}"), timeout)?;
    match reply.split_once(' ').map(|(_, rest)| rest) {
        Some(rest) if rest.starts_with("OK ") => Ok(Some(rest[3..].to_string())),
        Some("NOTFOUND") => Ok(None),
        _ => Err(format!("bad reply {reply:?}")),
    }
}

/// `PUT key value`, panicking unless it is acknowledged.
pub fn kv_put(addr: &str, key: &str, value: &str) {
    let reply = kv_request(addr, &format!("PUT {key} {value}"), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    assert!(reply.contains("OK"), "PUT {key} answered {reply:?}");
}

/// One request line (`0 1 OP`) on a fresh connection; the reply line.
pub fn kv_request(addr: &str, op: &str, timeout: Duration) -> Result<String, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("0 1 {op}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    Ok(line.trim_end().to_string())
}

/// Waits (up to 3 s) until every thread of `pid` runs untraced, then checks a GET
/// of preloaded key `key_index` and of `marker` (whose value must be `marker`
/// too). Err(why) when the program is not healthy.
pub fn check_serving(
    pid: u32,
    addr: &str,
    key_index: usize,
    marker: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        if !alive(pid) {
            return Err(format!("the program (pid {pid}) is dead"));
        }
        match unhealthy_threads(pid) {
            Some(bad) if bad.is_empty() => break,
            Some(bad) if t.elapsed() > Duration::from_secs(3) => {
                return Err(format!(
                    "3 s on, threads are still stopped or traced (tid, state, tracer): {bad:?}"
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let key = preload_key(key_index);
    match kv_get(addr, &key, Duration::from_secs(5)) {
        Ok(Some(v)) if v == preload_value(key_index) => {}
        other => {
            return Err(format!(
                "GET {key} answered {:?} instead of its preloaded value",
                other.map(|o| o.map(|v| v.chars().take(60).collect::<String>())),
            ))
        }
    }
    match kv_get(addr, marker, Duration::from_secs(5)) {
        Ok(Some(v)) if v == marker => Ok(t.elapsed()),
        other => Err(format!("GET {marker} answered {other:?}")),
    }
}

/// The start of a Go crash report in `stderr` (its goroutine dump can be long), or
/// the end of `stderr` when there is none.
pub fn crash_summary(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let first = lines.iter().position(|l| {
        [
            "fatal error",
            "panic:",
            "unexpected signal",
            "SIGSEGV",
            "SIGBUS",
            "SIGILL",
            "runtime:",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    });
    match first {
        Some(i) => lines[i..lines.len().min(i + 12)].join("\n"),
        None => lines[lines.len().saturating_sub(12)..].join("\n"),
    }
}
