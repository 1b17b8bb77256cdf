/// An in-memory [`crate::Store`] (placeholder; implemented next).
#[derive(Debug, Default)]
pub struct MemStore;
