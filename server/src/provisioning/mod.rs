//! From a request to a machine someone is logged into: requests and their approval, quotas,
//! placement, the provisioning jobs, the guest becoming reachable, leases, shutdowns and the
//! day-2 operations on the VMs requests made.
pub mod approval;
mod approvals;
pub mod day2;
pub mod guest;
pub mod leases;
mod limits;
pub mod migration;
pub mod placement;
pub mod provisioner;
pub mod quota;
pub mod requests;
pub mod shutdown;
mod validate;
mod vms;
