//! The typed vocabulary of a request's and a portal VM's life, shared by the DTOs, the
//! backend's SQL binds and the pages. The database's CHECKs on `requests.state`, `vms.phase`
//! and `request_approvals.decision` hold the same sets, and `vm_phase_building()` the same
//! rule as `VmPhase::building` (tests compare them).
use serde::{Deserialize, Serialize};

/// Where a request is: submitted → (pending approval →) approved → provisioning → fulfilled,
/// or it ends failed, rejected, cancelled or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Submitted,
    PendingApproval,
    Approved,
    Provisioning,
    Fulfilled,
    Failed,
    Rejected,
    Cancelled,
    Expired,
}

impl RequestState {
    pub const ALL: [RequestState; 9] = [
        RequestState::Submitted,
        RequestState::PendingApproval,
        RequestState::Approved,
        RequestState::Provisioning,
        RequestState::Fulfilled,
        RequestState::Failed,
        RequestState::Rejected,
        RequestState::Cancelled,
        RequestState::Expired,
    ];

    /// The happy path, in order: the steps a request page draws.
    pub const PATH: [RequestState; 5] = [
        RequestState::Submitted,
        RequestState::PendingApproval,
        RequestState::Approved,
        RequestState::Provisioning,
        RequestState::Fulfilled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Submitted => "submitted",
            RequestState::PendingApproval => "pending_approval",
            RequestState::Approved => "approved",
            RequestState::Provisioning => "provisioning",
            RequestState::Fulfilled => "fulfilled",
            RequestState::Failed => "failed",
            RequestState::Rejected => "rejected",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        RequestState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn label(self) -> &'static str {
        match self {
            RequestState::Submitted => "Submitted",
            RequestState::PendingApproval => "Pending approval",
            RequestState::Approved => "Approved",
            RequestState::Provisioning => "Provisioning",
            RequestState::Fulfilled => "Fulfilled",
            RequestState::Failed => "Failed",
            RequestState::Rejected => "Rejected",
            RequestState::Cancelled => "Cancelled",
            RequestState::Expired => "Expired",
        }
    }

    /// Still changing: its page keeps refreshing itself, and lists count it as open.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            RequestState::Submitted
                | RequestState::PendingApproval
                | RequestState::Approved
                | RequestState::Provisioning
        )
    }

    /// Not decided yet: its requester may still cancel it.
    pub fn undecided(self) -> bool {
        matches!(
            self,
            RequestState::Submitted | RequestState::PendingApproval
        )
    }

    /// The badge's CSS classes.
    pub fn badge(self) -> &'static str {
        match self {
            RequestState::Fulfilled => "badge ok",
            RequestState::Rejected | RequestState::Failed | RequestState::Expired => "badge danger",
            RequestState::Cancelled => "badge muted",
            _ => "badge warn",
        }
    }
}

impl std::fmt::Display for RequestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For reading the column (`#[sqlx(try_from = "String")]` in the backend).
impl TryFrom<String> for RequestState {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        RequestState::parse(&s).ok_or_else(|| format!("unknown request state {s:?}"))
    }
}

/// Where the portal is with a VM it makes: pending → placing → cloning → seeding → defining →
/// starting → running; expired (stopped at its lease's end), deleting → deleted, or failed.
/// What the hypervisor says of the domain (running, shutoff, …) is its state, not its phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    Pending,
    Placing,
    Cloning,
    Seeding,
    Defining,
    Starting,
    Running,
    Failed,
    Expired,
    Deleting,
    Deleted,
}

impl VmPhase {
    pub const ALL: [VmPhase; 11] = [
        VmPhase::Pending,
        VmPhase::Placing,
        VmPhase::Cloning,
        VmPhase::Seeding,
        VmPhase::Defining,
        VmPhase::Starting,
        VmPhase::Running,
        VmPhase::Failed,
        VmPhase::Expired,
        VmPhase::Deleting,
        VmPhase::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Pending => "pending",
            VmPhase::Placing => "placing",
            VmPhase::Cloning => "cloning",
            VmPhase::Seeding => "seeding",
            VmPhase::Defining => "defining",
            VmPhase::Starting => "starting",
            VmPhase::Running => "running",
            VmPhase::Failed => "failed",
            VmPhase::Expired => "expired",
            VmPhase::Deleting => "deleting",
            VmPhase::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<VmPhase> {
        VmPhase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Placed on a host and being built there: its size counts against the host although
    /// no running domain shows it yet (the SQL function `vm_phase_building` says the same).
    pub fn building(self) -> bool {
        matches!(
            self,
            VmPhase::Placing
                | VmPhase::Cloning
                | VmPhase::Seeding
                | VmPhase::Defining
                | VmPhase::Starting
        )
    }
}

/// For reading the column (`#[sqlx(try_from = "String")]` in the backend).
impl TryFrom<String> for VmPhase {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        VmPhase::parse(&s).ok_or_else(|| format!("unknown VM phase {s:?}"))
    }
}

impl std::fmt::Display for VmPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An approver's decision on a request at one level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub const ALL: [Decision; 2] = [Decision::Approved, Decision::Rejected];

    /// As stored (`request_approvals.decision`).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
        }
    }

    /// What the decision form's buttons send: "approve" or "reject".
    pub fn form_value(self) -> &'static str {
        match self {
            Decision::Approved => "approve",
            Decision::Rejected => "reject",
        }
    }

    pub fn from_form(value: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.form_value() == value)
    }
}

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaResource {
    Vcpus,
    Memory,
    Disk,
    Vms,
}

impl QuotaResource {
    pub const ALL: [QuotaResource; 4] = [
        QuotaResource::Vcpus,
        QuotaResource::Memory,
        QuotaResource::Disk,
        QuotaResource::Vms,
    ];

    /// The name of its form field and of its line in DTOs.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaResource::Vcpus => "vcpus",
            QuotaResource::Memory => "memory",
            QuotaResource::Disk => "disk",
            QuotaResource::Vms => "vms",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            QuotaResource::Vcpus => "vCPUs",
            QuotaResource::Memory => "Memory",
            QuotaResource::Disk => "Disk",
            QuotaResource::Vms => "VMs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for s in RequestState::ALL {
            assert_eq!(RequestState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(RequestState::parse("open"), None);
        for p in VmPhase::ALL {
            assert_eq!(VmPhase::parse(p.as_str()), Some(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for d in Decision::ALL {
            assert_eq!(Decision::from_form(d.form_value()), Some(d));
            assert_eq!(
                serde_json::to_string(&d).unwrap(),
                format!("\"{}\"", d.as_str())
            );
        }
        assert_eq!(Decision::from_form("approved"), None);
        for r in QuotaResource::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
        }
    }
}
