//! veil-policy: placeholder, replaced by the policy engine.
