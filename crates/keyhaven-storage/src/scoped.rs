/// A prefixed view of a [`crate::Store`] (placeholder; implemented next).
#[derive(Debug)]
pub struct ScopedStore;
