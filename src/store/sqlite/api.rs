//! SQLite side of [`crate::store::api`]: sessions and unread counts.

/// `CONTAINS(haystack, needle)` is the 1-based position of `needle`, 0 when absent.
const CONTAINS: &str = "instr";

include!("../shared/api.rs");
