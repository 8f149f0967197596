//! The relay: session broker and zero-copy forwarder. To be implemented.
