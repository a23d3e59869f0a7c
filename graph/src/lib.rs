//! veil-graph: placeholder, replaced by the graph crate.
