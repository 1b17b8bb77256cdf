//! keyhaven-server (under construction).
