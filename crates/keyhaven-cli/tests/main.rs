//! End-to-end tests of the keyhaven binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod admission;
mod architecture;
mod audit;
mod authz;
mod bao;
mod cli;
mod csi_provider;
mod database;
mod database_leases;
mod deploy;
mod envelope;
mod ha;
mod hvac;
mod hvac_auth;
mod identity_cli;
mod kms_etcd;
mod kms_plugin;
mod limits;
mod postgres;
mod scan_fix;
mod seal;
mod seal_transit;
mod server;
mod tls;
mod transit_cli;
