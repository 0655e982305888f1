//! CheckSync's host driver library: freeze, capture, encode, restore.
