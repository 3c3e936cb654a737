//! What every domain area stands on: transactions with row-level security (`db`), who may do
//! what (`authz`), the audit trail, the job queue, live events, the clock, and the replicas
//! sharing the database (`cluster`).
pub mod audit;
pub mod authz;
pub mod clock;
pub mod cluster;
pub mod db;
pub mod error;
pub mod jobs;
pub mod list;
pub mod live;
