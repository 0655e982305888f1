//! Shared helpers for the CheckSync benchmarks.
