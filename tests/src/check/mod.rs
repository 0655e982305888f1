//! Correctness checkers that judge the Go fixtures from the outside, from what
//! their clients recorded (see [`history`] for the file contract).
//!
//! - [`kv`]: linearizability of a key-value history.
//! - [`lock`]: mutual exclusion of a lock service.
//! - [`mr`]: a MapReduce word count's output against a sequential count.
//! - [`preload`]: the kvstore's preloaded values are intact.

pub mod history;
pub mod kv;
pub mod lock;
pub mod mr;
pub mod preload;
