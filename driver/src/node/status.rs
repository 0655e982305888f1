//! The status endpoint: `--status ADDR` on either driver serves
//! `GET /metrics` (any path) in the Prometheus text format, and
//! `cs-driver status ADDR` fetches and prints it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::io::{AsyncReadExt, AsyncWriteExt};

/// A cumulative histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

const PAUSE_MS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0,
];
const EPOCH_BYTES: &[f64] = &[
    4096.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// What a driver reports.
#[derive(Debug, Clone)]
pub struct Stats {
    /// `primary`, `backup`, `serving` (a promoted backup) or `fenced`.
    pub role: &'static str,
    /// Primary: a backup holds a committed base.
    pub protected: bool,
    pub term: u64,
    /// Primary: last epoch captured; backup: last epoch committed.
    pub epoch: u64,
    /// Primary: newest epoch the backup acked.
    pub acked: u64,
    pub last_ack: Option<Instant>,
    pub epochs: u64,
    pub full_epochs: u64,
    pub output_produced: u64,
    pub output_released: u64,
    /// The backup's epoch promoted, once promoted.
    pub promoted_epoch: Option<u64>,
    pub pause_ms: Histogram,
    pub epoch_bytes: Histogram,
    /// Primary: from asking for an epoch's capture to the backup's ack of it
    /// (what a reply held by output commit waits at least).
    pub ack_ms: Histogram,
    /// Primary: bytes sent to the backup (channel records, framing included).
    pub wire_bytes: u64,
}

impl Stats {
    pub fn new(role: &'static str) -> Stats {
        Stats {
            role,
            protected: false,
            term: 0,
            epoch: 0,
            acked: 0,
            last_ack: None,
            epochs: 0,
            full_epochs: 0,
            output_produced: 0,
            output_released: 0,
            promoted_epoch: None,
            pause_ms: Histogram::new(PAUSE_MS),
            epoch_bytes: Histogram::new(EPOCH_BYTES),
            ack_ms: Histogram::new(PAUSE_MS),
            wire_bytes: 0,
        }
    }

    /// The Prometheus text exposition of these stats.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP checksync_role this driver's role (1 for the current one)\n# TYPE checksync_role gauge"
        );
        for r in ["primary", "backup", "serving", "fenced"] {
            let _ = writeln!(
                o,
                "checksync_role{{role=\"{r}\"}} {}",
                u8::from(self.role == r)
            );
        }
        let mut g = |name: &str, help: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        g(
            "checksync_protected",
            "1 when a backup holds a committed base of the program",
            u8::from(self.protected).to_string(),
        );
        g("checksync_term", "replication term", self.term.to_string());
        g(
            "checksync_epoch",
            "primary: last epoch captured; backup: last epoch committed",
            self.epoch.to_string(),
        );
        g(
            "checksync_acked_epoch",
            "newest epoch the backup acknowledged",
            self.acked.to_string(),
        );
        g(
            "checksync_lag_epochs",
            "epochs captured and not acknowledged",
            self.epoch.saturating_sub(self.acked).to_string(),
        );
        g(
            "checksync_last_ack_age_seconds",
            "seconds since the last acknowledgement (-1: none yet)",
            self.last_ack
                .map_or("-1".into(), |t| format!("{:.3}", t.elapsed().as_secs_f64())),
        );
        g(
            "checksync_epochs_total",
            "epochs captured (primary) or committed (backup)",
            self.epochs.to_string(),
        );
        g(
            "checksync_full_epochs_total",
            "full epochs among them",
            self.full_epochs.to_string(),
        );
        g(
            "checksync_output_produced_bytes",
            "bytes the program wrote to its clients (proxy)",
            self.output_produced.to_string(),
        );
        g(
            "checksync_output_released_bytes",
            "bytes let through to the clients",
            self.output_released.to_string(),
        );
        g(
            "checksync_promoted_epoch",
            "epoch this node promoted (0: not promoted)",
            self.promoted_epoch.unwrap_or(0).to_string(),
        );
        g(
            "checksync_wire_bytes_total",
            "primary: bytes sent to the backup, framing and encryption included",
            self.wire_bytes.to_string(),
        );
        self.pause_ms.render(
            &mut o,
            "checksync_epoch_pause_ms",
            "program pause per epoch, milliseconds",
        );
        self.epoch_bytes
            .render(&mut o, "checksync_epoch_bytes", "encoded epoch size, bytes");
        self.ack_ms.render(
            &mut o,
            "checksync_epoch_ack_ms",
            "primary: from asking for an epoch's capture to the backup's ack, milliseconds",
        );
        o
    }
}

pub type SharedStats = Arc<Mutex<Stats>>;

/// Serves `stats` over HTTP on `listener` (one response per connection).
pub async fn serve(listener: async_net::TcpListener, stats: SharedStats) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            smol::Timer::after(Duration::from_millis(10)).await;
            continue;
        };
        let stats = stats.clone();
        smol::spawn(async move {
            // Read the request head (bounded, with a deadline); its content is ignored.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = async {
                while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            smol::future::or(read, async {
                smol::Timer::after(Duration::from_secs(2)).await;
            })
            .await;
            let body = stats.lock().map(|s| s.render()).unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        })
        .detach();
    }
}

/// Starts the endpoint on `addr` in the background.
pub fn start(addr: SocketAddr, stats: SharedStats) -> Result<(), super::NodeError> {
    let l =
        smol::block_on(async_net::TcpListener::bind(addr)).map_err(|e| super::NodeError::Net {
            what: "status endpoint on",
            addr: addr.to_string(),
            source: e,
        })?;
    smol::spawn(serve(l, stats)).detach();
    Ok(())
}

/// `cs-driver status ADDR`: fetches the endpoint's text.
pub fn fetch(addr: &str) -> Result<String, super::NodeError> {
    use std::io::{Read, Write};
    let err = |e| super::NodeError::Net {
        what: "reading the status of",
        addr: addr.to_string(),
        source: e,
    };
    let sa = super::parse_addr("status", addr)?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(3)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").map_err(err)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(err)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(err(std::io::Error::other(
            "not a CheckSync status endpoint (no HTTP 200 answer)",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_render_names_every_series() {
        let mut s = Stats::new("primary");
        s.pause_ms.observe(0.3);
        s.pause_ms.observe(7.0);
        s.epoch = 5;
        s.acked = 3;
        let t = s.render();
        assert!(
            t.contains("checksync_epoch_pause_ms_bucket{le=\"0.5\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("checksync_epoch_pause_ms_bucket{le=\"10\"} 2"),
            "{t}"
        );
        assert!(t.contains("checksync_epoch_pause_ms_count 2"), "{t}");
        assert!(t.contains("checksync_lag_epochs 2"), "{t}");
        assert!(t.contains("checksync_role{role=\"primary\"} 1"), "{t}");
        assert!(t.contains("checksync_role{role=\"backup\"} 0"), "{t}");
    }
}
