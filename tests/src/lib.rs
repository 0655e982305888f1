//! Harness for CheckSync end-to-end tests: fixture builds and process control
//! ([`fixture`]), and checkers that judge the Go fixtures' behaviour from the
//! outside ([`check`]). The `cs-check` binary is the checkers' command line.
//! [`netns`] gives replication tests two "machines" (network namespaces) on one host;
//! [`relay`] puts a man in the middle of their channel.

pub mod check;
pub mod driver;
pub mod fixture;
pub mod image_edit;
pub mod kstate;
pub mod netns;
pub mod procs;
pub mod relay;
