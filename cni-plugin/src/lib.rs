//! veil-cni: the `veil` CNI plugin (placeholder lib; the plugin is being written).
//! The daemon socket protocol lives in [`api`].
pub mod api;
