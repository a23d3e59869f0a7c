//! Which nodes are peers: the pure computation lives in the controller
//! ([`crate::controller::peers`]); this re-export keeps the WireGuard part's
//! paths.

pub use crate::controller::peers::*;
