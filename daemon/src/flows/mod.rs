//! The flow collector (not yet implemented).
