//! The audit trail: who changed what, when, from where.
use crate::error::AppError;
use crate::Page;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor_email: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub tenant_name: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    pub tenant_id: Option<Uuid>,
    /// Prefix of the action, e.g. `tenant.` or `user.create`.
    pub action: String,
    /// Substring of the actor's e-mail.
    pub actor: String,
    /// newest (default), oldest, action or actor.
    pub sort: String,
    /// 1-based.
    pub page: u32,
}

pub const AUDIT_SORTS: [(&str, &str); 4] = [
    ("newest", "Newest"),
    ("oldest", "Oldest"),
    ("action", "Action"),
    ("actor", "Actor"),
];

#[server(prefix = "/api", endpoint = "list_audit")]
pub async fn list_audit(
    #[server(default)] tenant_id: Option<Uuid>,
    #[server(default)] action: String,
    #[server(default)] actor: String,
    #[server(default)] sort: String,
    #[server(default)] page: u32,
) -> Result<Page<AuditEntry>, AppError> {
    let req = crate::seam::request()?;
    let filter = AuditFilter {
        tenant_id,
        action,
        actor,
        sort,
        page,
    };
    crate::seam::reply(crate::seam::backend()?.audit.list(&req, filter).await)
}

/// One audit chain as the audit page shows it: how many rows are sealed, the last signed
/// checkpoint, and what the last verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainState {
    pub chain: Uuid,
    /// The tenant's name; `None` for the fleet's chain.
    pub tenant_name: Option<String>,
    pub rows: i64,
    pub checkpoint_seq: Option<i64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub checkpoint_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub checked_at: Option<OffsetDateTime>,
    pub intact_to: Option<i64>,
    /// The first broken, missing or reordered row, or a checkpoint the rows do not reproduce.
    pub problem: Option<String>,
}

impl ChainState {
    pub fn name(&self) -> String {
        self.tenant_name
            .clone()
            .unwrap_or_else(|| "Fleet (no tenant)".into())
    }
}

/// The audit chains the viewer may see (one tenant's when `tenant_id` is given).
#[server(prefix = "/api", endpoint = "audit_chains")]
pub async fn audit_chains(
    #[server(default)] tenant_id: Option<Uuid>,
) -> Result<Vec<ChainState>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.audit.chains(&req, tenant_id).await)
}

/// Verifies those chains from their first row now, against every signed checkpoint.
#[server(prefix = "/api", endpoint = "verify_audit")]
pub async fn verify_audit(
    #[server(default)] tenant_id: Option<Uuid>,
) -> Result<Vec<ChainState>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.audit.verify(&req, tenant_id).await)
}
