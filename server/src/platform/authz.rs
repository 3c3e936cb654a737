//! Who may see or do what, decided in one place. Backend operations ask these functions with
//! the resolved `Actor` and the facts of the object (its tenant, owner or requester) and take
//! their refusal from here, so a VM's page, its actions, its console, its lease, the lists and
//! the live stream cannot disagree. Memberships of suspended tenants count as none
//! (`Actor::role_in`). The SQL of lists and row-level security state the same rules for many
//! rows at once; `server/tests/it/authorization.rs` checks every call site against them.
use app::account::{Actor, TenantRole};
use app::error::AppError;
use uuid::Uuid;

/// What the rules need to know of a domain or portal VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmFacts {
    /// Made by the portal (or adopted into it); drift is the fleet admins' alone.
    pub managed: bool,
    pub tenant: Option<Uuid>,
    pub owner: Option<Uuid>,
}

impl VmFacts {
    /// A portal VM (every row of `vms`).
    pub fn portal(tenant: Uuid, owner: Option<Uuid>) -> Self {
        VmFacts {
            managed: true,
            tenant: Some(tenant),
            owner,
        }
    }
}

/// A member (any role) of `tenant`, which is not suspended.
pub fn member_of(actor: &Actor, tenant: Uuid) -> bool {
    actor.role_in(tenant).is_some()
}

/// The tenants whose rows the actor's own lists show: active memberships only.
pub fn member_tenants(actor: &Actor) -> Vec<Uuid> {
    actor
        .memberships
        .iter()
        .filter(|m| !m.tenant_suspended)
        .map(|m| m.tenant_id)
        .collect()
}

/// Sees and acts on a VM (its page, charts, lifecycle and day-2 actions, consoles, lease):
/// fleet admins on any domain; on portal VMs its owner while a member of its tenant, and the
/// tenant's admins.
pub fn acts_on_vm(actor: &Actor, vm: &VmFacts) -> bool {
    actor.fleet_admin
        || match (vm.managed, vm.tenant) {
            (true, Some(tenant)) => {
                (vm.owner == Some(actor.user_id) && member_of(actor, tenant))
                    || administers(actor, tenant)
            }
            _ => false,
        }
}

/// `acts_on_vm`, refused as `access` says.
pub fn check_vm(actor: &Actor, vm: &VmFacts, access: Access) -> Result<(), AppError> {
    if acts_on_vm(actor, vm) {
        Ok(())
    } else {
        Err(refuse(access, "VM"))
    }
}

/// Reads a request of `tenant` made by `requester`: the requester while a member, the
/// tenant's approvers, admins and managers, fleet admins.
pub fn sees_request(actor: &Actor, tenant: Uuid, requester: Uuid) -> bool {
    (requester == actor.user_id && member_of(actor, tenant))
        || decides_in(actor, tenant)
        || actor.role_in(tenant) == Some(TenantRole::Manager)
}

/// Cancels a request (while it is undecided): its requester, while a member of its tenant.
pub fn cancels_request(actor: &Actor, tenant: Uuid, requester: Uuid) -> bool {
    requester == actor.user_id && member_of(actor, tenant)
}

/// Gets a live event about a VM or request: whoever may see the object, and the approvers and
/// managers of its tenant, whose pages (inbox, usage) count its VMs.
pub fn sees_event(
    actor: &Actor,
    tenant: Option<Uuid>,
    owner: Option<Uuid>,
    requester: Option<Uuid>,
) -> bool {
    if actor.fleet_admin {
        return true;
    }
    let Some(tenant) = tenant else {
        return false;
    };
    let own = owner == Some(actor.user_id) || requester == Some(actor.user_id);
    (own && member_of(actor, tenant))
        || matches!(
            actor.role_in(tenant),
            Some(TenantRole::Approver | TenantRole::TenantAdmin | TenantRole::Manager)
        )
}

/// Decides requests of `tenant` (the tenant's approval levels may narrow it further).
pub fn decides_in(actor: &Actor, tenant: Uuid) -> bool {
    actor.approves(tenant)
}

/// Manages `tenant`: members, quotas, templates, its audit trail.
pub fn administers(actor: &Actor, tenant: Uuid) -> bool {
    actor.administers(tenant)
}

/// Manages webhook endpoints: a tenant's (`Some`), its admins; fleet-wide ones, fleet admins.
pub fn manages_webhooks(actor: &Actor, tenant: Option<Uuid>) -> bool {
    match tenant {
        Some(t) => administers(actor, t),
        None => actor.fleet_admin,
    }
}

/// Reads usage and cost reports of `tenant`.
pub fn reads_reports(actor: &Actor, tenant: Uuid) -> bool {
    actor.fleet_admin
        || matches!(
            actor.role_in(tenant),
            Some(TenantRole::Manager | TenantRole::TenantAdmin)
        )
}

/// The audit chains the actor reads, verifies and exports: `tenant` given, its chain for its
/// admins and fleet admins; else every chain (`None`) for fleet admins and the chains of the
/// tenants a tenant admin administers.
pub fn audit_chains(actor: &Actor, tenant: Option<Uuid>) -> Result<Option<Vec<Uuid>>, AppError> {
    match tenant {
        Some(t) if administers(actor, t) || actor.fleet_admin => Ok(Some(vec![t])),
        Some(t) => Err(refuse_tenant(actor, t)),
        None if actor.fleet_admin => Ok(None),
        None => {
            let mine: Vec<Uuid> = actor.administered_tenants().map(|m| m.tenant_id).collect();
            if mine.is_empty() {
                Err(AppError::Forbidden)
            } else {
                Ok(Some(mine))
            }
        }
    }
}

/// Requires a second factor of a tenant's members (`Some`): its admins and fleet admins; of
/// everyone (`None`): fleet admins.
pub fn sets_two_factor_policy(actor: &Actor, tenant: Option<Uuid>) -> bool {
    match tenant {
        Some(t) => administers(actor, t),
        None => actor.fleet_admin,
    }
}

/// `sets_two_factor_policy`, refused as a tenant-level operation (or 403 fleet-wide).
pub fn check_two_factor_policy(actor: &Actor, tenant: Option<Uuid>) -> Result<(), AppError> {
    match tenant {
        _ if sets_two_factor_policy(actor, tenant) => Ok(()),
        Some(t) => Err(refuse_tenant(actor, t)),
        None => Err(AppError::Forbidden),
    }
}

/// What an operation does with an object, which decides how a refusal is worded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading it (a page, charts): a refused reader is told it does not exist (404).
    See,
    /// Acting on it (an action, a ticket, a lease): refused with 403. The identifiers came
    /// from someone who could see the object, and random UUIDs reveal nothing.
    Act,
}

/// The refusal for an object (`what`: "VM", "Request") the actor may not see or act on.
pub fn refuse(access: Access, what: &str) -> AppError {
    match access {
        Access::See => AppError::NotFound(what.into()),
        Access::Act => AppError::Forbidden,
    }
}

/// The refusal for a tenant-level operation: members of the tenant learn they may not (403);
/// to everyone else the tenant does not exist (404).
pub fn refuse_tenant(actor: &Actor, tenant: Uuid) -> AppError {
    if member_of(actor, tenant) {
        AppError::Forbidden
    } else {
        AppError::NotFound("Tenant".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use app::account::Membership;

    fn actor(fleet_admin: bool, memberships: &[(Uuid, TenantRole, bool)]) -> Actor {
        Actor {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            email: "a@example.com".into(),
            display_name: "A".into(),
            fleet_admin,
            must_change_password: false,
            must_enrol_two_factor: false,
            memberships: memberships
                .iter()
                .map(|&(tenant_id, role, tenant_suspended)| Membership {
                    tenant_id,
                    tenant_name: "T".into(),
                    role,
                    tenant_suspended,
                })
                .collect(),
        }
    }

    /// Roles × (active, suspended tenant) × (own, someone else's, drift): who acts on the VM.
    #[test]
    fn vm_rules_by_role_and_tenant_state() {
        let t = Uuid::new_v4();
        use TenantRole::*;
        for (role, owner_acts, other_acts) in [
            (Requester, true, false),
            (Approver, true, false),
            (Manager, true, false),
            (TenantAdmin, true, true),
        ] {
            for suspended in [false, true] {
                let a = actor(false, &[(t, role, suspended)]);
                let own = VmFacts::portal(t, Some(a.user_id));
                let other = VmFacts::portal(t, Some(Uuid::new_v4()));
                let drift = VmFacts {
                    managed: false,
                    ..own
                };
                let live = !suspended;
                assert_eq!(
                    acts_on_vm(&a, &own),
                    owner_acts && live,
                    "{role:?} {suspended}"
                );
                assert_eq!(acts_on_vm(&a, &other), other_acts && live, "{role:?}");
                assert!(!acts_on_vm(&a, &drift), "{role:?} on drift");
                assert_eq!(
                    refuse_tenant(&a, t),
                    if live {
                        AppError::Forbidden
                    } else {
                        AppError::NotFound("Tenant".into())
                    }
                );
            }
        }
        let fleet = actor(true, &[]);
        assert!(acts_on_vm(
            &fleet,
            &VmFacts {
                managed: false,
                tenant: None,
                owner: None
            }
        ));
        let stranger = actor(false, &[(Uuid::new_v4(), TenantRole::TenantAdmin, false)]);
        assert!(!acts_on_vm(&stranger, &VmFacts::portal(t, None)));
        assert_eq!(
            refuse_tenant(&stranger, t),
            AppError::NotFound("Tenant".into())
        );
    }

    #[test]
    fn request_and_event_rules_by_role() {
        let t = Uuid::new_v4();
        use TenantRole::*;
        for (role, sees_others, reports) in [
            (Requester, false, false),
            (Approver, true, false),
            (Manager, true, true),
            (TenantAdmin, true, true),
        ] {
            let a = actor(false, &[(t, role, false)]);
            let someone = Uuid::new_v4();
            assert!(sees_request(&a, t, a.user_id), "{role:?}");
            assert_eq!(sees_request(&a, t, someone), sees_others, "{role:?}");
            assert!(cancels_request(&a, t, a.user_id), "{role:?}");
            assert!(!cancels_request(&a, t, someone), "{role:?}");
            assert_eq!(
                sees_event(&a, Some(t), Some(someone), None),
                sees_others,
                "{role:?}"
            );
            assert!(sees_event(&a, Some(t), Some(a.user_id), None));
            assert_eq!(reads_reports(&a, t), reports, "{role:?}");
            let gone = actor(false, &[(t, role, true)]);
            assert!(!sees_request(&gone, t, gone.user_id), "{role:?} suspended");
            assert!(
                !cancels_request(&gone, t, gone.user_id),
                "{role:?} suspended"
            );
            assert!(!sees_event(&gone, Some(t), Some(gone.user_id), None));
            assert!(!reads_reports(&gone, t));
        }
        assert!(!sees_event(
            &actor(false, &[(t, Requester, false)]),
            None,
            None,
            None
        ));
        assert!(sees_event(&actor(true, &[]), None, None, None));
        assert!(!cancels_request(&actor(true, &[]), t, Uuid::new_v4()));
    }
}
