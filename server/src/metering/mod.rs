//! What the fleet uses and costs: metrics samples and their rollups, usage hours, reports.
pub mod metrics;
pub mod reports;
pub mod usage;
