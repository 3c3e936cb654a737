//! The audit trail: one row per state change, written in the changing transaction.
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Result};
use crate::platform::list::{self, asc, desc, Order, Window};
use app::audit::{AuditEntry, AuditFilter};
use app::error::AppError;
use app::seam::{AuditTrail, RequestCtx};
use app::{Page, Place};
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

    /// The tenant, when the object may have none (fleet-wide objects).
    pub fn tenant_opt(mut self, tenant: Option<Uuid>) -> Self {
        self.tenant_id = tenant;
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

pub async fn record(tx: &mut Tx, origin: &Origin, event: Event<'_>) -> Result<()> {
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

/// The audit list's orders. The actor's address may be empty (system work), so this list pages
/// by number only.
const ORDERS: [Order; 4] = [
    Order {
        name: "newest",
        key: &[desc("a.at", "timestamptz"), desc("a.id", "int8")],
    },
    Order {
        name: "oldest",
        key: &[asc("a.at", "timestamptz"), asc("a.id", "int8")],
    },
    Order {
        name: "action",
        key: &[
            asc("a.action", "text"),
            desc("a.at", "timestamptz"),
            desc("a.id", "int8"),
        ],
    },
    Order {
        name: "actor",
        key: &[
            asc("a.actor_email NULLS FIRST", "text"),
            desc("a.at", "timestamptz"),
            desc("a.id", "int8"),
        ],
    },
];

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
}

#[async_trait]
impl AuditTrail for AuditBackend {
    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        req: &RequestCtx,
        filter: AuditFilter,
    ) -> Result<Page<AuditEntry>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            // Fleet admins read everything; tenant admins only the tenants they administer.
            let tenants: Vec<Uuid> = match filter.tenant_id {
                Some(t) if crate::platform::authz::administers(actor, t) => vec![t],
                Some(_) => return Err(AppError::Forbidden.into()),
                None if actor.fleet_admin => vec![],
                None => actor.administered_tenants().map(|m| m.tenant_id).collect(),
            };
            if !actor.fleet_admin && tenants.is_empty() {
                return Err(AppError::Forbidden.into());
            }
            if filter.action.chars().count() > 100 {
                return Err(
                    AppError::field("action", "Filter actions by at most 100 characters.").into(),
                );
            }
            if filter.actor.chars().count() > 254 {
                return Err(AppError::field(
                    "actor",
                    "An e-mail address has at most 254 characters.",
                )
                .into());
            }
            let order = list::order(&filter.sort, &ORDERS)?;
            let place = Place {
                page: filter.page.max(1),
                ..Place::default()
            };
            // One query in fleet scope for every case: for a tenant admin the tenant filter below
            // is the authorisation (rows of no tenant never match it).
            let any_tenant = actor.fleet_admin && filter.tenant_id.is_none();
            let scope = match filter.tenant_id {
                Some(t) => Scope {
                    tenant: Some(t),
                    fleet: true,
                    user: None,
                },
                None => Scope::fleet(),
            };
            const WHERE: &str = "WHERE ($1 OR a.tenant_id = ANY($2))
               AND a.action LIKE $3 || '%'
               AND coalesce(a.actor_email, '') ILIKE '%' || $4 || '%'";
            let mut args = sqlx::postgres::PgArguments::default();
            list::arg(&mut args, any_tenant)?;
            list::arg(&mut args, &tenants)?;
            list::arg(&mut args, list::escape_like(&filter.action))?;
            list::arg(&mut args, list::escape_like(&filter.actor))?;
            let w = Window::new(order, &place, &args, PER_PAGE)?;
            let mut tx = db::begin(&self.pool, scope).await?;
            let rows: Vec<Row> = sqlx::query_as_with(
                &format!(
                "SELECT a.id, a.at, a.actor_email, a.tenant_id, t.name AS tenant_name, a.action,
                        a.object_type, a.object_id, a.before, a.after, a.client_addr
                 FROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id
                 {WHERE} ORDER BY {} {}",
                w.pick, w.limit
            ),
                w.args,
            )
            .fetch_all(&mut *tx)
            .await?;
            let total: i64 =
                sqlx::query_scalar_with(&format!("SELECT count(*) FROM audit_log a {WHERE}"), args)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            let items = rows
                .into_iter()
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
                page: place.page,
                per_page: PER_PAGE,
                total,
                before: None,
                after: None,
            })
        })
        .await
    }
}
