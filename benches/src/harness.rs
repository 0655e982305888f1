//! What the bench binaries that run the release `cs-driver` and the Go fixtures
//! share: where things are, the medians, and a JSON field from a client's summary.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Go toolchain whose fixture builds the benches run.
pub const GO: &str = "go1.27.3";

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ lies in the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR/release`, or the workspace's `target/release`.
pub fn release_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            let d = if d.is_absolute() {
                d
            } else {
                workspace().join(d)
            };
            d.join("release")
        }
        _ => workspace().join("target/release"),
    }
}

/// The release `cs-driver` the benches run.
pub fn cs_driver_bin() -> PathBuf {
    release_dir().join("cs-driver")
}

/// A Go fixture's binary ([`GO`] build).
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("go-fixtures/build").join(GO).join(name)
}

/// The newest modification time of any file below `dir`.
pub fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_source(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// A number field of a one-line JSON object (a fixture client's summary).
pub fn json_number(line: &str, field: &str) -> Option<f64> {
    let key = format!("\"{field}\":");
    let rest = &line[line.find(&key)? + key.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// The `q` quantile of `v` (NaNs left out; the median averages the middle two).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    if q == 0.5 {
        let n = s.len();
        return if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The median of `v` (NaNs left out).
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// `/proc/loadavg`'s three load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
