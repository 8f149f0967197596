//! End-to-end security: token, admission value, Noise transport. To be implemented.
