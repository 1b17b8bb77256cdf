//! keyhaven-storage-sql (under construction).
