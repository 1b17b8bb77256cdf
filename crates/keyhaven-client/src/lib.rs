//! keyhaven-client (under construction).
