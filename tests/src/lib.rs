//! Harness for CheckSync end-to-end tests: fixture builds and process control
//! ([`fixture`]), and checkers that judge the Go fixtures' behaviour ([`check`]).

pub mod check;
