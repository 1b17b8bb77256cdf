//! The KV version 2 secrets engine (under construction).

use std::sync::Arc;

use crate::backend::{Backend, BackendContext};
use crate::error::EngineError;

/// Build a KV v2 backend for a mount.
pub fn factory(_ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Err(EngineError::Unavailable("kv v2 is not built yet".to_owned()))
}
