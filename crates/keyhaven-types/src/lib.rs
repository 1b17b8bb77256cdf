//! keyhaven-types (under construction).
