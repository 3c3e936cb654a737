//! Who is signed in, their memberships, passwords and sessions.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// A member's role inside one tenant. Tenant admins may do everything approvers and
/// requesters may do in that tenant; managers read reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantRole {
    Requester,
    Approver,
    TenantAdmin,
    Manager,
}

impl TenantRole {
    pub const ALL: [TenantRole; 4] = [
        TenantRole::Requester,
        TenantRole::Approver,
        TenantRole::TenantAdmin,
        TenantRole::Manager,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantRole::Requester => "requester",
            TenantRole::Approver => "approver",
            TenantRole::TenantAdmin => "tenant_admin",
            TenantRole::Manager => "manager",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            TenantRole::Requester => "Requester",
            TenantRole::Approver => "Approver",
            TenantRole::TenantAdmin => "Tenant admin",
            TenantRole::Manager => "Manager",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AppError> {
        TenantRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AppError::field("role", "Choose one of the listed roles."))
    }
}

impl fmt::Display for TenantRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub tenant_id: Uuid,
    pub tenant_name: String,
    pub role: TenantRole,
    pub tenant_suspended: bool,
}

/// The authenticated user of one request, as the backend resolved it from the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub fleet_admin: bool,
    pub must_change_password: bool,
    pub memberships: Vec<Membership>,
    /// Required to use a second factor and not set up yet: only that setup is open to them.
    #[serde(default)]
    pub must_enrol_two_factor: bool,
}

impl Actor {
    /// The actor's role in `tenant`, ignoring suspended tenants.
    pub fn role_in(&self, tenant: Uuid) -> Option<TenantRole> {
        self.memberships
            .iter()
            .find(|m| m.tenant_id == tenant && !m.tenant_suspended)
            .map(|m| m.role)
    }

    /// May manage members of `tenant` and read its audit trail.
    pub fn administers(&self, tenant: Uuid) -> bool {
        self.fleet_admin || self.role_in(tenant) == Some(TenantRole::TenantAdmin)
    }

    /// May ask for VMs in `tenant` (managers only read reports).
    pub fn may_request(&self, tenant: Uuid) -> bool {
        matches!(
            self.role_in(tenant),
            Some(TenantRole::Requester | TenantRole::Approver | TenantRole::TenantAdmin)
        )
    }

    /// May decide requests in `tenant` (subject to the tenant's approval levels).
    pub fn approves(&self, tenant: Uuid) -> bool {
        self.fleet_admin
            || matches!(
                self.role_in(tenant),
                Some(TenantRole::Approver | TenantRole::TenantAdmin)
            )
    }

    /// Tenants where this actor may decide requests (fleet admins: see `fleet_admin`).
    pub fn approver_tenants(&self) -> Vec<Uuid> {
        self.memberships
            .iter()
            .filter(|m| {
                !m.tenant_suspended
                    && matches!(m.role, TenantRole::Approver | TenantRole::TenantAdmin)
            })
            .map(|m| m.tenant_id)
            .collect()
    }

    /// Tenants this actor administers (what the navigation offers).
    pub fn administered_tenants(&self) -> impl Iterator<Item = &Membership> {
        self.memberships
            .iter()
            .filter(|m| m.role == TenantRole::TenantAdmin && !m.tenant_suspended)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub current: bool,
}

/// A freshly issued one-time password, shown once to whoever created the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePassword {
    pub user_id: Uuid,
    pub email: String,
    pub password: String,
}

#[server(prefix = "/api", endpoint = "current_actor")]
pub async fn current_actor() -> Result<Option<Actor>, AppError> {
    Ok(crate::seam::request()?.actor)
}

#[server(prefix = "/api", endpoint = "login")]
pub async fn login(
    email: String,
    password: String,
    #[server(default)] next: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    let step = crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .login(&req, &email, &password)
            .await,
    )?;
    match step {
        SignIn::Done => leptos_axum::redirect(&safe_next(&next)),
        SignIn::CodeNeeded => leptos_axum::redirect(&format!(
            "/login/code?next={}",
            crate::url::urlencode(&safe_next(&next))
        )),
    }
    Ok(())
}

/// How far a password took a sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignIn {
    Done,
    /// The account uses a second factor: `/login/code` asks for it.
    CodeNeeded,
}

/// Where sign-in may send the browser next: a path on this site, never another origin
/// (`//evil.example`, `/\evil.example`, `https://…`).
pub fn safe_next(next: &str) -> String {
    let on_site = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !next.chars().any(|c| c.is_control() || c == '\\')
        && !next.starts_with("/login");
    if on_site {
        next.to_string()
    } else {
        "/".to_string()
    }
}

#[server(prefix = "/api", endpoint = "logout")]
pub async fn logout() -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.accounts.logout(&req).await)?;
    leptos_axum::redirect("/login");
    Ok(())
}

#[server(prefix = "/api", endpoint = "change_password")]
pub async fn change_password(
    current_password: String,
    new_password: String,
    confirm_password: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .change_password(&req, &current_password, &new_password, &confirm_password)
            .await,
    )?;
    leptos_axum::redirect("/account?changed=1");
    Ok(())
}

#[server(prefix = "/api", endpoint = "my_sessions")]
pub async fn my_sessions() -> Result<Vec<SessionInfo>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.accounts.sessions(&req).await)
}

#[server(prefix = "/api", endpoint = "end_session")]
pub async fn end_session(session_id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .accounts
            .end_session(&req, session_id)
            .await,
    )
}

/// One of a user's SSH public keys, as their account page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKey {
    pub id: Uuid,
    pub algorithm: String,
    pub comment: String,
    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[server(prefix = "/api", endpoint = "my_ssh_keys")]
pub async fn my_ssh_keys() -> Result<Vec<SshKey>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.ssh_keys.list(&req).await)
}

/// Adds a key in OpenSSH's one-line form (`ssh-ed25519 AAAA… comment`).
#[server(prefix = "/api", endpoint = "add_ssh_key")]
pub async fn add_ssh_key(key: String) -> Result<SshKey, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.ssh_keys.add(&req, &key).await)
}

#[server(prefix = "/api", endpoint = "remove_ssh_key")]
pub async fn remove_ssh_key(id: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.ssh_keys.remove(&req, id).await)
}

#[cfg(test)]
mod next_tests {
    use super::safe_next;

    #[test]
    fn sign_in_returns_only_to_this_site() {
        assert_eq!(safe_next("/vms/a/b?range=7d"), "/vms/a/b?range=7d");
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "/ok\\..",
            "/login?next=/x",
            "/a\nb",
            "vms",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }
}
