//! The audit broker: every request and response through [`crate::Core::handle`], allowed or
//! denied, is recorded by the enabled audit devices before it takes effect.
//!
//! (Being implemented: no devices exist yet, so nothing is recorded.)

use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::Store;
use serde_json::{Map, Value};

use crate::error::EngineError;
use crate::request::{Request, Response};
use crate::token::TokenEntry;

/// A sink for audit records (the server provides a file device).
#[async_trait]
pub trait AuditDevice: Send + Sync + 'static {
    /// Device name, e.g. `file`.
    fn name(&self) -> &str;
    /// Device type, e.g. `file`.
    fn kind(&self) -> &str;
    /// Free text.
    fn description(&self) -> &str {
        ""
    }
    /// Options shown by `sys/audit`.
    fn options(&self) -> Map<String, Value> {
        Map::new()
    }
    /// Record one JSON line (without the newline). Returns once the device accepted it.
    async fn write(&self, record: Vec<u8>) -> Result<(), EngineError>;
}

/// Fans records out to the devices and fails closed.
#[derive(Default)]
pub struct AuditBroker {
    devices: Vec<Arc<dyn AuditDevice>>,
}

impl AuditBroker {
    /// A broker over these devices.
    pub fn new(devices: Vec<Arc<dyn AuditDevice>>) -> Self {
        AuditBroker { devices }
    }

    /// Whether any device is enabled.
    pub fn is_enabled(&self) -> bool {
        !self.devices.is_empty()
    }

    /// Prepare per-device keys from the unsealed barrier.
    pub(crate) async fn unseal(&self, _storage: Arc<dyn Store>) -> Result<(), EngineError> {
        Ok(())
    }

    /// Drop per-device keys.
    pub(crate) fn seal(&self) {}

    /// Record a request (after authentication and authorization, before it runs).
    pub async fn log_request(
        &self,
        _auth: Option<&TokenEntry>,
        _req: &Request,
        _error: Option<&EngineError>,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Record a response.
    pub async fn log_response(
        &self,
        _auth: Option<&TokenEntry>,
        _req: &Request,
        _result: &Result<Response, EngineError>,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// `sys/audit`: the devices, keyed `<name>/`.
    pub fn list(&self) -> Map<String, Value> {
        Map::new()
    }

    /// `sys/audit-hash/<device>`: the HMAC a device would log for `input`.
    pub fn hash(&self, _device: &str, _input: &str) -> Result<String, EngineError> {
        Err(EngineError::NotFound("no such audit device".to_owned()))
    }
}
