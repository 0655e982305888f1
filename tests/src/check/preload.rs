//! The kvstore's preloaded values are intact: read every one back over the kv
//! line protocol and compare it with the deterministic value it must have.
//!
//! The value function is go-fixtures' (`internal/kv/preload.go`), reimplemented
//! here and pinned by golden values computed with the Go code:
//!
//! ```text
//! key(i)   = "pre/" + decimal(i)
//! len(i)   = 1024 + (i * 2654435761) mod 3073           (u64 arithmetic)
//! value(i) = first len(i) bytes of key(i) + "=" + hex(z1) + hex(z2) + ...
//!            z1, z2, ... = the SplitMix64 stream seeded with i, 16 hex digits each
//! count(N) = the smallest n with len(0) + ... + len(n-1) >= N MiB
//! ```
//!
//! Protocol (go-fixtures `internal/wire`): request `"<client> <seq> GET <key>\n"`,
//! reply `"<seq> OK <value>\n"` or `"<seq> NOTFOUND\n"`. The check sends anonymous
//! requests (client 0, not deduplicated), pipelined in batches on one connection;
//! the server answers each connection's requests in order. Then it asks `STATS`
//! for `preload_keys`, to catch a server started with another `-preload-mib`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Key of preloaded value `i`.
pub fn preload_key(i: usize) -> String {
    format!("pre/{i}")
}

/// Length in bytes of preloaded value `i` (1024..=4096).
pub fn preload_len(i: usize) -> usize {
    1024 + ((i as u64).wrapping_mul(2_654_435_761) % 3073) as usize
}

/// The deterministic value of preloaded key `i`.
pub fn preload_value(i: usize) -> String {
    let n = preload_len(i);
    let mut s = String::with_capacity(n + 16);
    s.push_str(&preload_key(i));
    s.push('=');
    let mut x = i as u64;
    while s.len() < n {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        s.push_str(&format!("{z:016x}"));
    }
    s.truncate(n);
    s
}

/// Number of preloaded keys for `mib` MiB of values.
pub fn preload_count(mib: u64) -> usize {
    let want = mib << 20;
    let (mut total, mut n) = (0u64, 0usize);
    while total < want {
        total += preload_len(n) as u64;
        n += 1;
    }
    n
}

/// A successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreloadReport {
    /// The `-preload-mib` checked against.
    pub mib: u64,
    /// Keys read back, all intact.
    pub keys: usize,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    /// Could not connect.
    #[error("connecting to kvstore at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection failed or timed out mid-way.
    #[error("talking to kvstore at {addr} (after {checked} keys): {source}")]
    Io {
        /// The address.
        addr: String,
        /// Keys checked before it failed.
        checked: usize,
        /// The cause.
        source: std::io::Error,
    },
    /// A reply that does not fit the protocol.
    #[error("kvstore at {addr}: bad reply to {request:?}: {reply:?}")]
    Protocol {
        /// The address.
        addr: String,
        /// What was asked.
        request: String,
        /// What came back (truncated).
        reply: String,
    },
    /// Some preloaded values are not intact.
    #[error("{bad} of {keys} preloaded keys are bad; first bad key {first_key}: {reason}")]
    BadValues {
        /// How many are bad.
        bad: usize,
        /// How many were checked.
        keys: usize,
        /// The bad key with the lowest index.
        first_key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server preloaded another number of keys than `mib` gives.
    #[error("server reports {server} preloaded keys, but -preload-mib {mib} gives {expected}")]
    WrongCount {
        /// The `mib` checked against.
        mib: u64,
        /// Keys `mib` gives.
        expected: usize,
        /// Keys the server's STATS reports.
        server: usize,
    },
}

fn truncated(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// One connection speaking the line protocol as the anonymous client 0.
struct Wire {
    addr: String,
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Wire {
    fn connect(addr: &str, timeout: Duration) -> Result<Wire, PreloadError> {
        let err = |source| PreloadError::Connect {
            addr: addr.to_string(),
            source,
        };
        let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
            err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{e}"),
            ))
        })?;
        let w = TcpStream::connect_timeout(&sock, timeout).map_err(err)?;
        w.set_read_timeout(Some(timeout)).map_err(err)?;
        w.set_write_timeout(Some(timeout)).map_err(err)?;
        let _ = w.set_nodelay(true);
        let r = BufReader::with_capacity(256 << 10, w.try_clone().map_err(err)?);
        Ok(Wire {
            addr: addr.to_string(),
            w,
            r,
            line: String::new(),
        })
    }

    /// Reads one reply line and returns (seq, status, payload).
    fn reply(&mut self, checked: usize) -> Result<(u64, String, String), PreloadError> {
        self.line.clear();
        let n = self
            .r
            .read_line(&mut self.line)
            .map_err(|source| PreloadError::Io {
                addr: self.addr.clone(),
                checked,
                source,
            })?;
        if n == 0 || !self.line.ends_with('\n') {
            return Err(PreloadError::Io {
                addr: self.addr.clone(),
                checked,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        let line = self.line.trim_end_matches('\n').trim_end_matches('\r');
        let mut parts = line.splitn(3, ' ');
        let seq = parts.next().and_then(|s| s.parse().ok());
        let status = parts.next();
        match (seq, status) {
            (Some(seq), Some(status)) => Ok((
                seq,
                status.to_string(),
                parts.next().unwrap_or("").to_string(),
            )),
            _ => Err(PreloadError::Protocol {
                addr: self.addr.clone(),
                request: String::new(),
                reply: truncated(line),
            }),
        }
    }

    fn send(&mut self, buf: &[u8], checked: usize) -> Result<(), PreloadError> {
        self.w.write_all(buf).map_err(|source| PreloadError::Io {
            addr: self.addr.clone(),
            checked,
            source,
        })
    }
}

/// Reads back all `preload_count(mib)` preloaded keys from the kvstore at `addr`
/// and checks each, then checks the server's own count. `timeout` bounds each
/// network wait.
pub fn verify_preload(
    addr: &str,
    mib: u64,
    timeout: Duration,
) -> Result<PreloadReport, PreloadError> {
    const BATCH: usize = 256;
    let keys = preload_count(mib);
    let mut wire = Wire::connect(addr, timeout)?;
    let (mut bad, mut first_bad): (usize, Option<(usize, String)>) = (0, None);
    let mut start = 0;
    let mut req = Vec::new();
    while start < keys {
        let end = (start + BATCH).min(keys);
        req.clear();
        for i in start..end {
            writeln!(req, "0 {} GET {}", i + 1, preload_key(i)).expect("write to Vec");
        }
        wire.send(&req, start)?;
        for i in start..end {
            let (seq, status, payload) = wire.reply(i)?;
            if seq != i as u64 + 1 {
                return Err(PreloadError::Protocol {
                    addr: addr.to_string(),
                    request: format!("0 {} GET {}", i + 1, preload_key(i)),
                    reply: truncated(&format!("{seq} {status} {payload}")),
                });
            }
            let why = match status.as_str() {
                "OK" if payload == preload_value(i) => continue,
                "OK" => {
                    let want = preload_value(i);
                    let at = payload
                        .bytes()
                        .zip(want.bytes())
                        .position(|(a, b)| a != b)
                        .unwrap_or(payload.len().min(want.len()));
                    format!(
                        "value differs from byte {at} (len {}, want {}; starts {:?})",
                        payload.len(),
                        want.len(),
                        truncated(&payload[..payload.len().min(40)])
                    )
                }
                "NOTFOUND" => "missing".to_string(),
                other => format!("{other} {}", truncated(&payload)),
            };
            bad += 1;
            if first_bad.is_none() {
                first_bad = Some((i, why));
            }
        }
        start = end;
    }
    if let Some((i, reason)) = first_bad {
        return Err(PreloadError::BadValues {
            bad,
            keys,
            first_key: preload_key(i),
            reason,
        });
    }
    // The server's own count.
    wire.send(b"0 1 STATS\n", keys)?;
    let (_, status, payload) = wire.reply(keys)?;
    let server = (status == "OK")
        .then(|| serde_json::from_str::<serde_json::Value>(&payload).ok())
        .flatten()
        .and_then(|v| v.get("preload_keys")?.as_u64());
    match server {
        Some(s) if s as usize == keys => Ok(PreloadReport { mib, keys }),
        Some(s) => Err(PreloadError::WrongCount {
            mib,
            expected: keys,
            server: s as usize,
        }),
        None => Err(PreloadError::Protocol {
            addr: addr.to_string(),
            request: "0 1 STATS".into(),
            reply: truncated(&format!("{status} {payload}")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// FNV-1a 64, to pin whole values against the Go implementation's output.
    fn fnv1a(s: &str) -> u64 {
        s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    #[test]
    fn values_match_the_go_implementation() {
        // (i, len, last 20 bytes, fnv1a-64 of the value), printed by go-fixtures'
        // PreloadValue/PreloadLen with Go 1.19.8.
        let golden = [
            (0, 1024, "4929a88f1de255b237b8", 0x383f55b642904499u64),
            (1, 3969, "cf0cfdfd4c0752fda6b1", 0xcdd475ec170d0fd4),
            (7, 3201, "adc91b1f79620fdc5293", 0xf62bf3b96bd9ae34),
            (12345, 3459, "536044e1fd14dc4713dd", 0xad961d65be4984e8),
        ];
        for (i, len, tail, hash) in golden {
            let v = preload_value(i);
            assert_eq!(preload_len(i), len);
            assert_eq!(v.len(), len);
            assert!(v.starts_with(&format!("pre/{i}=")));
            assert_eq!(&v[len - 20..], tail, "value {i}");
            assert_eq!(fnv1a(&v), hash, "value {i}");
        }
        assert!(preload_value(0).starts_with("pre/0=e220a8397b1dcdaf6e789e6aa1b965f4"));
        assert_eq!(preload_count(0), 0);
        assert_eq!(preload_count(1), 417);
        assert_eq!(preload_count(8), 3279);
    }

    /// A fake kvstore answering GETs from `value(i)` and STATS with `server_keys`.
    fn fake_server(
        value: impl Fn(usize) -> Option<String> + Send + 'static,
        server_keys: usize,
    ) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            for line in BufReader::new(s).lines() {
                let line = line.unwrap();
                let f: Vec<&str> = line.splitn(4, ' ').collect();
                let reply = match f[2] {
                    "GET" => {
                        let i: usize = f[3].strip_prefix("pre/").unwrap().parse().unwrap();
                        match value(i) {
                            Some(v) => format!("{} OK {v}\n", f[1]),
                            None => format!("{} NOTFOUND\n", f[1]),
                        }
                    }
                    _ => format!("{} OK {{\"preload_keys\":{server_keys}}}\n", f[1]),
                };
                w.write_all(reply.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn intact_preload_passes() {
        let addr = fake_server(|i| Some(preload_value(i)), preload_count(1));
        let r = verify_preload(&addr, 1, Duration::from_secs(5)).unwrap();
        assert_eq!(r.keys, 417);
    }

    #[test]
    fn reports_first_bad_key() {
        let addr = fake_server(
            |i| match i {
                100 => None,
                200 => Some(preload_value(i).replacen('=', "#", 1)),
                _ => Some(preload_value(i)),
            },
            preload_count(1),
        );
        let err = verify_preload(&addr, 1, Duration::from_secs(5)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("2 of 417") && text.contains("pre/100") && text.contains("missing"),
            "{text}"
        );
        let addr = fake_server(
            |i| {
                Some(preload_value(i))
                    .filter(|_| i != 5)
                    .or(Some("x".into()))
            },
            preload_count(1),
        );
        let text = verify_preload(&addr, 1, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(text.contains("pre/5") && text.contains("byte 0"), "{text}");
    }

    #[test]
    fn reports_wrong_server_count() {
        let addr = fake_server(|i| Some(preload_value(i)), 999);
        let err = verify_preload(&addr, 1, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, PreloadError::WrongCount { server: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn reports_connection_failure() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = verify_preload(&addr, 1, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, PreloadError::Connect { .. }), "{err}");
    }
}
