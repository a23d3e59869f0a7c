//! The only code in veild that writes kernel state.
pub mod nftables;
