//! The `inet veil` table.
pub mod policy;
