//! keyhaven-crypto (under construction).
