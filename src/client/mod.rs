//! Origin and dest event loops (mux channels over one WebSocket). To be implemented.
