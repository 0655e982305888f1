//! CheckSync's checkpoint and replication wire format.
//!
//! The format is shared by the restore stub (no_std, no allocator) and the driver.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

/// Format magic: the first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"CSYN";
