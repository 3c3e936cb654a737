//! The integration tests, one binary: each module was its own test binary, and each linked
//! the whole server (11 links per change). Run one area with `cargo test --test it -- NAME::`.
mod common;

mod alerts;
mod audit;
mod authorization;
mod cluster;
mod failover;
mod guests;
mod hypervisor;
mod images;
mod isolation;
mod libvirtd;
mod lifecycle;
mod metrics;
mod migration;
mod notifications;
mod provisioning;
mod reclamation;
mod remote;
mod reports;
mod sessions;
mod storage;
mod two_factor;
mod validation;
mod vocabulary;
mod webhooks;
