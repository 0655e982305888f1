//! Reading the history files that the Go load clients write (JSON Lines).
//!
//! One line is one operation as the client saw it: what it asked, when it asked
//! (`invoke_ns`), when the answer came (`complete_ns`), and what came back. The
//! contract, shared with `go-fixtures/` (see its README):
//!
//! ```text
//! {"client":3,"op":"put","key":"k7","value":"v-3-12","invoke_ns":123,"complete_ns":456,
//!  "invoke_wall_ns":..,"complete_wall_ns":..,"status":"ok"}
//! {"client":3,"op":"get","key":"k7","output":"v-3-12","found":true,...}
//! {"client":2,"op":"acquire","lock":"L3","granted":true,...}
//! {"client":2,"op":"holder","lock":"L3","output":"2",...}
//! ```
//!
//! `status` is `ok` (the server answered), `fail` (definitely not applied) or
//! `unknown` (sent, no answer: it may or may not have taken effect, and its
//! completion is open-ended). `*_ns` times come from one monotonic clock per client
//! process; `*_wall_ns` are unix nanoseconds, used when several files (several
//! client processes) are merged into one history.
//!
//! Parsing is tolerant of fields it does not know, and strict about the ones it
//! needs: a malformed line is an error that names the file and the line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// Where a record came from, for reports: `file:line` (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The history file's name as given to the loader.
    pub file: Arc<str>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// What the client knows about whether an operation happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// The server answered: the operation took effect between invoke and complete.
    Ok,
    /// Definitely not applied (for example refused before it was sent).
    Fail,
    /// Sent without an answer: it may have taken effect at any time after its
    /// invocation, or never.
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Unknown => "unknown",
        })
    }
}

/// Which clock a loaded history's times come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// `invoke_ns`/`complete_ns`: precise, but only comparable within one file.
    Monotonic,
    /// `invoke_wall_ns`/`complete_wall_ns`: comparable across client processes.
    Wall,
}

impl Clock {
    /// The clock to use for `n_files` files merged into one history: monotonic
    /// for a single file, wall time otherwise.
    pub fn for_files(n_files: usize) -> Clock {
        if n_files > 1 {
            Clock::Wall
        } else {
            Clock::Monotonic
        }
    }
}

/// A key-value operation's input and, for reads, its output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// A read; `output` is `Some(value)` when found, `None` when the key was absent.
    /// Only meaningful for `Status::Ok`.
    Get {
        /// What the read returned.
        output: Option<String>,
    },
    /// Set the key to the value.
    Put(String),
    /// Concatenate the value to the key's current value (an absent key counts as "").
    Append(String),
    /// Remove the key.
    Delete,
}

/// One key-value operation, on one clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvOp {
    /// Client id as written in the history (numbers are kept as their decimal text).
    pub client: String,
    /// The key operated on.
    pub key: String,
    /// What was asked (and read).
    pub input: KvInput,
    /// When the client sent it.
    pub invoke_ns: u64,
    /// When the answer came; `None` when there was none (`Status::Unknown`), and
    /// ignored by the checker unless the status is `Ok`.
    pub complete_ns: Option<u64>,
    /// What the client knows about it.
    pub status: Status,
    /// File and line, when loaded from a file.
    pub origin: Option<Origin>,
}

/// A lock operation's input and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockInput {
    /// Ask for the lock; `granted` is the answer when the status is `Ok`.
    Acquire {
        /// Whether the server granted it (false: timed out waiting).
        granted: bool,
        /// The lease asked for: the grant lapses by itself this long after it was
        /// made (`None`: held until released).
        lease_ms: Option<u64>,
    },
    /// Give the lock back.
    Release {
        /// The server's answer when known: true when the client held the lock and
        /// gave it back, false when it did not hold it (any more).
        released: Option<bool>,
    },
    /// Ask who holds the lock; `output` is the holder's client id, `None` for nobody.
    Holder {
        /// The holder the server reported.
        output: Option<String>,
    },
}

/// One lock operation, on one clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOp {
    /// Client id as written in the history.
    pub client: String,
    /// The lock's name.
    pub lock: String,
    /// What was asked and answered.
    pub input: LockInput,
    /// When the client sent it.
    pub invoke_ns: u64,
    /// When the answer came (`None` without an answer).
    pub complete_ns: Option<u64>,
    /// What the client knows about it.
    pub status: Status,
    /// File and line, when loaded from a file.
    pub origin: Option<Origin>,
}

/// Why a history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading the file failed.
    #[error("reading history {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a record this contract allows.
    #[error("{file}:{line}: malformed history record: {reason}")]
    Malformed {
        /// The file's name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The union of every field any record may carry; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct RawRecord {
    client: Option<serde_json::Value>,
    op: Option<String>,
    key: Option<String>,
    lock: Option<String>,
    value: Option<String>,
    output: Option<serde_json::Value>,
    found: Option<bool>,
    granted: Option<bool>,
    released: Option<bool>,
    lease_ms: Option<u64>,
    invoke_ns: Option<u64>,
    complete_ns: Option<u64>,
    invoke_wall_ns: Option<u64>,
    complete_wall_ns: Option<u64>,
    status: Option<String>,
}

/// The fields every record has, validated.
struct Common {
    client: String,
    op: String,
    invoke_ns: u64,
    complete_ns: Option<u64>,
    status: Status,
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl RawRecord {
    fn common(&self, clock: Clock) -> Result<Common, String> {
        let client = match &self.client {
            Some(v) => scalar_text(v).ok_or("\"client\" is neither a number nor a string")?,
            None => return Err("missing \"client\"".into()),
        };
        let op = self.op.clone().ok_or("missing \"op\"")?;
        let status = match self.status.as_deref() {
            Some("ok") => Status::Ok,
            Some("fail") => Status::Fail,
            Some("unknown") => Status::Unknown,
            Some(other) => return Err(format!("unknown status {other:?}")),
            None => return Err("missing \"status\"".into()),
        };
        let (inv, comp, inv_name, comp_name) = match clock {
            Clock::Monotonic => (self.invoke_ns, self.complete_ns, "invoke_ns", "complete_ns"),
            Clock::Wall => (
                self.invoke_wall_ns,
                self.complete_wall_ns,
                "invoke_wall_ns",
                "complete_wall_ns",
            ),
        };
        let invoke_ns = inv.ok_or_else(|| format!("missing \"{inv_name}\""))?;
        // An unknown-status op may carry the time the client gave up (or 0): it
        // means nothing, since the op may take effect any time after invoke.
        let complete_ns = match status {
            Status::Unknown => None,
            _ => {
                let c = comp.ok_or_else(|| format!("missing \"{comp_name}\""))?;
                if c < invoke_ns {
                    return Err(format!("{comp_name} {c} is before {inv_name} {invoke_ns}"));
                }
                Some(c)
            }
        };
        Ok(Common {
            client,
            op,
            invoke_ns,
            complete_ns,
            status,
        })
    }

    fn kv(self, clock: Clock, origin: Origin) -> Result<KvOp, String> {
        let c = self.common(clock)?;
        let key = self.key.clone().ok_or("missing \"key\"")?;
        let value = || self.value.clone().ok_or("missing \"value\"");
        let input = match c.op.as_str() {
            "get" => {
                let output = if c.status == Status::Ok {
                    match self.found {
                        Some(true) => Some(match &self.output {
                            Some(serde_json::Value::String(s)) => s.clone(),
                            Some(_) => return Err("\"output\" is not a string".into()),
                            None => return Err("found get without \"output\"".into()),
                        }),
                        Some(false) => None,
                        None => return Err("ok get without \"found\"".into()),
                    }
                } else {
                    None
                };
                KvInput::Get { output }
            }
            "put" => KvInput::Put(value()?),
            "append" => KvInput::Append(value()?),
            "delete" => KvInput::Delete,
            other => return Err(format!("unknown kv op {other:?}")),
        };
        Ok(KvOp {
            client: c.client,
            key,
            input,
            invoke_ns: c.invoke_ns,
            complete_ns: c.complete_ns,
            status: c.status,
            origin: Some(origin),
        })
    }

    fn lock(self, clock: Clock, origin: Origin) -> Result<LockOp, String> {
        let c = self.common(clock)?;
        let lock = self.lock.clone().ok_or("missing \"lock\"")?;
        let ok = c.status == Status::Ok;
        let input = match c.op.as_str() {
            "acquire" => LockInput::Acquire {
                granted: match self.granted {
                    Some(g) => g,
                    None if ok => return Err("ok acquire without \"granted\"".into()),
                    None => false,
                },
                lease_ms: self.lease_ms.filter(|&ms| ms > 0),
            },
            "release" => LockInput::Release {
                released: self.released.filter(|_| ok),
            },
            "holder" => LockInput::Holder {
                output: match &self.output {
                    Some(v) => {
                        let s = scalar_text(v).ok_or("\"output\" is not a string or number")?;
                        (!s.is_empty()).then_some(s)
                    }
                    None if ok => return Err("ok holder without \"output\"".into()),
                    None => None,
                },
            },
            other => return Err(format!("unknown lock op {other:?}")),
        };
        Ok(LockOp {
            client: c.client,
            lock,
            input,
            invoke_ns: c.invoke_ns,
            complete_ns: c.complete_ns,
            status: c.status,
            origin: Some(origin),
        })
    }
}

fn parse_lines<T>(
    text: &str,
    file: &str,
    clock: Clock,
    convert: impl Fn(RawRecord, Clock, Origin) -> Result<T, String>,
) -> Result<Vec<T>, HistoryError> {
    let name: Arc<str> = Arc::from(file);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |reason: String| HistoryError::Malformed {
            file: file.to_string(),
            line: line_no,
            reason,
        };
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
        let origin = Origin {
            file: name.clone(),
            line: line_no,
        };
        out.push(convert(raw, clock, origin).map_err(malformed)?);
    }
    Ok(out)
}

/// Parses one key-value history (the text of one file named `file`).
pub fn parse_kv(text: &str, file: &str, clock: Clock) -> Result<Vec<KvOp>, HistoryError> {
    parse_lines(text, file, clock, RawRecord::kv)
}

/// Parses one lock history (the text of one file named `file`).
pub fn parse_lock(text: &str, file: &str, clock: Clock) -> Result<Vec<LockOp>, HistoryError> {
    parse_lines(text, file, clock, RawRecord::lock)
}

fn load<T>(
    paths: &[impl AsRef<Path>],
    parse: impl Fn(&str, &str, Clock) -> Result<Vec<T>, HistoryError>,
) -> Result<Vec<T>, HistoryError> {
    let clock = Clock::for_files(paths.len());
    let mut all = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let text = std::fs::read_to_string(p).map_err(|source| HistoryError::Read {
            path: p.to_path_buf(),
            source,
        })?;
        all.extend(parse(&text, &p.display().to_string(), clock)?);
    }
    Ok(all)
}

/// Loads and merges key-value histories: monotonic times for one file, wall times
/// for several (see [`Clock::for_files`]).
pub fn load_kv(paths: &[impl AsRef<Path>]) -> Result<Vec<KvOp>, HistoryError> {
    load(paths, parse_kv)
}

/// Loads and merges lock histories: monotonic times for one file, wall times for
/// several (see [`Clock::for_files`]).
pub fn load_lock(paths: &[impl AsRef<Path>]) -> Result<Vec<LockOp>, HistoryError> {
    load(paths, parse_lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kv_op_and_ignores_unknown_fields() {
        let text = r#"{"client":3,"op":"put","key":"k7","value":"v-3-12","invoke_ns":123,"complete_ns":456,"invoke_wall_ns":1000,"complete_wall_ns":2000,"status":"ok","extra":[1,2]}

{"client":"c4","op":"get","key":"k7","output":"v-3-12","found":true,"invoke_ns":500,"complete_ns":600,"status":"ok"}
{"client":3,"op":"get","key":"k8","output":"","found":false,"invoke_ns":700,"complete_ns":800,"status":"ok"}
{"client":3,"op":"append","key":"k8","value":"x","invoke_ns":900,"complete_ns":0,"status":"unknown"}
{"client":3,"op":"delete","key":"k8","invoke_ns":900,"complete_ns":901,"status":"fail"}
"#;
        let ops = parse_kv(text, "h.jsonl", Clock::Monotonic).unwrap();
        assert_eq!(ops.len(), 5);
        assert_eq!(ops[0].input, KvInput::Put("v-3-12".into()));
        assert_eq!(ops[0].client, "3");
        assert_eq!(ops[1].client, "c4");
        assert_eq!(
            ops[1].input,
            KvInput::Get {
                output: Some("v-3-12".into())
            }
        );
        assert_eq!(ops[1].origin.as_ref().unwrap().line, 3);
        assert_eq!(ops[2].input, KvInput::Get { output: None });
        assert_eq!(ops[3].status, Status::Unknown);
        assert_eq!(ops[3].complete_ns, None);
        assert_eq!(ops[4].input, KvInput::Delete);
        assert_eq!(ops[4].complete_ns, Some(901));
    }

    #[test]
    fn wall_clock_uses_wall_fields_and_requires_them() {
        let text = r#"{"client":1,"op":"delete","key":"a","invoke_ns":1,"complete_ns":2,"invoke_wall_ns":10,"complete_wall_ns":20,"status":"ok"}"#;
        let ops = parse_kv(text, "h", Clock::Wall).unwrap();
        assert_eq!((ops[0].invoke_ns, ops[0].complete_ns), (10, Some(20)));
        let text =
            r#"{"client":1,"op":"delete","key":"a","invoke_ns":1,"complete_ns":2,"status":"ok"}"#;
        let err = parse_kv(text, "h", Clock::Wall).unwrap_err().to_string();
        assert!(
            err.contains("h:1") && err.contains("invoke_wall_ns"),
            "{err}"
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let cases = [
            ("not json", "expected"),
            (
                r#"{"op":"get","key":"a","found":false,"invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "client",
            ),
            (
                r#"{"client":1,"op":"frob","key":"a","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "frob",
            ),
            (
                r#"{"client":1,"op":"get","key":"a","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "found",
            ),
            (
                r#"{"client":1,"op":"get","key":"a","found":true,"invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "output",
            ),
            (
                r#"{"client":1,"op":"put","key":"a","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "value",
            ),
            (
                r#"{"client":1,"op":"put","value":"v","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "key",
            ),
            (
                r#"{"client":1,"op":"put","key":"a","value":"v","invoke_ns":5,"complete_ns":2,"status":"ok"}"#,
                "before",
            ),
            (
                r#"{"client":1,"op":"put","key":"a","value":"v","invoke_ns":1,"complete_ns":2,"status":"maybe"}"#,
                "maybe",
            ),
            (
                r#"{"client":1,"op":"put","key":"a","value":"v","complete_ns":2,"status":"ok"}"#,
                "invoke_ns",
            ),
            (
                r#"{"client":1,"op":"put","key":"a","value":"v","invoke_ns":1,"status":"ok"}"#,
                "complete_ns",
            ),
            (
                r#"{"client":[1],"op":"put","key":"a","value":"v","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
                "client",
            ),
        ];
        for (line, needle) in cases {
            let text = format!("\n{line}\n");
            let err = parse_kv(&text, "f.jsonl", Clock::Monotonic)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("f.jsonl:2: "), "{err}");
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn parses_lock_ops() {
        let text = r#"{"client":2,"op":"acquire","lock":"L3","invoke_ns":1,"complete_ns":2,"status":"ok","granted":true,"lease_ms":500}
{"client":2,"op":"holder","lock":"L3","output":"","invoke_ns":3,"complete_ns":4,"status":"ok"}
{"client":2,"op":"holder","lock":"L3","output":2,"invoke_ns":3,"complete_ns":4,"status":"ok"}
{"client":2,"op":"release","lock":"L3","released":false,"invoke_ns":5,"complete_ns":6,"status":"ok"}
{"client":2,"op":"acquire","lock":"L3","invoke_ns":7,"status":"unknown"}"#;
        let ops = parse_lock(text, "l", Clock::Monotonic).unwrap();
        assert_eq!(
            ops[0].input,
            LockInput::Acquire {
                granted: true,
                lease_ms: Some(500)
            }
        );
        assert_eq!(ops[1].input, LockInput::Holder { output: None });
        assert_eq!(
            ops[2].input,
            LockInput::Holder {
                output: Some("2".into())
            }
        );
        assert_eq!(
            ops[3].input,
            LockInput::Release {
                released: Some(false)
            }
        );
        assert_eq!(
            ops[4].input,
            LockInput::Acquire {
                granted: false,
                lease_ms: None
            }
        );
        let err = parse_lock(
            r#"{"client":2,"op":"acquire","lock":"L3","invoke_ns":1,"complete_ns":2,"status":"ok"}"#,
            "l",
            Clock::Monotonic,
        )
        .unwrap_err();
        assert!(err.to_string().contains("granted"), "{err}");
    }

    #[test]
    fn load_reports_missing_file() {
        let err = load_kv(&["/nonexistent/h.jsonl"]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/h.jsonl"), "{err}");
    }
}
