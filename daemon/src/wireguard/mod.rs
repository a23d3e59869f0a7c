//! The WireGuard datapath (not yet implemented).
