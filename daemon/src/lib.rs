//! veil-daemon: the node daemon `veild` and the CLI `veilctl`.
