//! Harness for CheckSync end-to-end tests: fixture builds, process control, checkers.
