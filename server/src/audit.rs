//! The audit trail: one row per state change, written in the changing transaction.
use crate::db::{self, Scope, Tx};
use app::audit::{AuditEntry, AuditFilter};
use app::error::AppError;
use app::seam::{AuditTrail, RequestCtx};
use app::Page;
use async_trait::async_trait;
use serde_json::Value;
use sqlx::PgPool;
use std::net::IpAddr;
use uuid::Uuid;

pub const PER_PAGE: u32 = 50;

/// One state change about to be recorded.
pub struct Event<'a> {
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl<'a> Event<'a> {
    pub fn new(action: &'a str, object_type: &'a str, object_id: impl ToString) -> Self {
        Event {
            action,
            object_type,
            object_id: Some(object_id.to_string()),
            tenant_id: None,
            before: None,
            after: None,
        }
    }

    pub fn tenant(mut self, tenant: Uuid) -> Self {
        self.tenant_id = Some(tenant);
        self
    }

    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// Who did it and from where.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    pub client_addr: Option<IpAddr>,
}

impl Origin {
    pub fn of(req: &RequestCtx) -> Self {
        Origin {
            actor_id: req.actor.as_ref().map(|a| a.user_id),
            actor_email: req.actor.as_ref().map(|a| a.email.clone()),
            client_addr: req.client_addr,
        }
    }
}

pub async fn record(tx: &mut Tx, origin: &Origin, event: Event<'_>) -> Result<(), AppError> {
    record_raw(tx, origin, event).await.map_err(db::internal)
}

/// `record` for background work that handles database errors itself.
pub async fn record_raw(tx: &mut Tx, origin: &Origin, event: Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor_id, actor_email, tenant_id, action, object_type, object_id, before, after, client_addr)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(origin.actor_id)
    .bind(&origin.actor_email)
    .bind(event.tenant_id)
    .bind(event.action)
    .bind(event.object_type)
    .bind(event.object_id)
    .bind(event.before)
    .bind(event.after)
    .bind(origin.client_addr.map(sqlx::types::ipnetwork::IpNetwork::from))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub struct AuditBackend {
    pub pool: PgPool,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    at: time::OffsetDateTime,
    actor_email: Option<String>,
    tenant_id: Option<Uuid>,
    tenant_name: Option<String>,
    action: String,
    object_type: String,
    object_id: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
    client_addr: Option<sqlx::types::ipnetwork::IpNetwork>,
    total: i64,
}

#[async_trait]
impl AuditTrail for AuditBackend {
    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        req: &RequestCtx,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, AppError> {
        let actor = req.actor()?;
        // Fleet admins read everything; tenant admins only the tenants they administer.
        let tenants: Vec<Uuid> = match filter.tenant_id {
            Some(t) if actor.administers(t) => vec![t],
            Some(_) => return Err(AppError::Forbidden),
            None if actor.fleet_admin => vec![],
            None => actor.administered_tenants().map(|m| m.tenant_id).collect(),
        };
        if !actor.fleet_admin && tenants.is_empty() {
            return Err(AppError::Forbidden);
        }
        if filter.action.len() > 100 || filter.actor.len() > 254 {
            return Err(AppError::field(
                "action",
                "Filters are limited to 100 characters.",
            ));
        }
        let page = filter.page.max(1);
        let mut items = Vec::new();
        let mut total = 0;
        // Row-level security sees one tenant per transaction: query each in its own scope
        // (fleet admins in fleet scope) and merge.
        let scopes: Vec<Scope> = if actor.fleet_admin && filter.tenant_id.is_none() {
            vec![Scope::fleet()]
        } else if actor.fleet_admin {
            vec![Scope {
                tenant: filter.tenant_id,
                fleet: true,
                user: None,
            }]
        } else {
            tenants.iter().map(|t| Scope::tenant(*t)).collect()
        };
        let limit = i64::from(PER_PAGE) * i64::from(page);
        for scope in scopes {
            let mut tx = db::begin(&self.pool, scope).await?;
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT a.id, a.at, a.actor_email, a.tenant_id, t.name AS tenant_name, a.action,
                        a.object_type, a.object_id, a.before, a.after, a.client_addr,
                        count(*) OVER () AS total
                 FROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id
                 WHERE ($1::uuid IS NULL OR a.tenant_id = $1)
                   AND a.action LIKE $2 || '%'
                   AND coalesce(a.actor_email, '') ILIKE '%' || $3 || '%'
                 ORDER BY a.at DESC, a.id DESC
                 LIMIT $4",
            )
            .bind(scope.tenant)
            .bind(db::escape_like(&filter.action))
            .bind(db::escape_like(&filter.actor))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await
            .map_err(db::internal)?;
            tx.commit().await.map_err(db::internal)?;
            total += rows.first().map(|r| r.total).unwrap_or(0);
            items.extend(rows);
        }
        items.sort_by_key(|r| std::cmp::Reverse((r.at, r.id)));
        let start = (i64::from(PER_PAGE) * i64::from(page - 1)) as usize;
        let items = items
            .into_iter()
            .skip(start)
            .take(PER_PAGE as usize)
            .map(|r| AuditEntry {
                id: r.id,
                at: r.at,
                actor_email: r.actor_email,
                tenant_id: r.tenant_id,
                tenant_name: r.tenant_name,
                action: r.action,
                object_type: r.object_type,
                object_id: r.object_id,
                before: r.before.map(|v| v.to_string()),
                after: r.after.map(|v| v.to_string()),
                client_addr: r.client_addr.map(|a| a.ip().to_string()),
            })
            .collect();
        Ok(Page {
            items,
            page,
            per_page: PER_PAGE,
            total,
        })
    }
}
