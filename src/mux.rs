//! End-to-end mux protocol between origin and dest, sans-IO. To be implemented.
