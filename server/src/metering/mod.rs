//! What the fleet uses and costs: metrics samples and their rollups, usage hours, reports,
//! and how long capacity lasts (forecast).
pub mod forecast;
pub mod metrics;
pub mod reports;
pub mod usage;
