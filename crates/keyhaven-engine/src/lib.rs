//! keyhaven-engine (under construction).
