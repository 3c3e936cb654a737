//! Tenants and memberships: the backend of the `Tenants` seam.
use crate::accounts::AccountsBackend;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::account::TenantRole;
use app::error::AppError;
use app::seam::{RequestCtx, Tenants};
use app::tenant::{Member, TenantSummary};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

pub struct TenantsBackend {
    pub pool: PgPool,
    pub accounts: AccountsBackend,
}

/// A validated tenant name.
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, AppError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(AppError::field("name", "Enter a name."));
        }
        if s.chars().count() > 100 {
            return Err(AppError::field("name", "Use at most 100 characters."));
        }
        if s.chars().any(char::is_control) {
            return Err(AppError::field(
                "name",
                "Remove control characters from the name.",
            ));
        }
        Ok(TenantName(s.to_string()))
    }
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    name: String,
    suspended: bool,
    member_count: i64,
    created_at: time::OffsetDateTime,
}

impl From<TenantRow> for TenantSummary {
    fn from(r: TenantRow) -> Self {
        TenantSummary {
            id: r.id,
            name: r.name,
            suspended: r.suspended,
            member_count: r.member_count,
            created_at: r.created_at,
        }
    }
}

const TENANT_COLUMNS: &str = "t.id, t.name, t.suspended_at IS NOT NULL AS suspended,
    (SELECT count(*) FROM memberships m WHERE m.tenant_id = t.id) AS member_count, t.created_at";

/// The actor must administer `tenant`; everyone else is told it does not exist or is refused.
pub(crate) fn require_admin_of(
    req: &RequestCtx,
    tenant: Uuid,
) -> Result<&app::account::Actor, AppError> {
    let actor = req.actor()?;
    if crate::platform::authz::administers(actor, tenant) {
        Ok(actor)
    } else if actor.memberships.iter().any(|m| m.tenant_id == tenant) {
        Err(AppError::Forbidden)
    } else {
        Err(AppError::NotFound("Tenant".into()))
    }
}

/// The transaction scope for work inside one tenant.
pub(crate) fn scope_for(actor: &app::account::Actor, tenant: Uuid) -> Scope {
    Scope {
        user: Some(actor.user_id),
        tenant: Some(tenant),
        fleet: actor.fleet_admin,
    }
}

impl TenantsBackend {
    async fn fetch(&self, tx: &mut db::Tx, id: Uuid) -> Result<TenantSummary> {
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants t WHERE t.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row
            .map(Into::into)
            .ok_or_else(|| AppError::NotFound("Tenant".into()))?)
    }

    async fn member_role(
        &self,
        tx: &mut db::Tx,
        tenant: Uuid,
        user: Uuid,
    ) -> Result<Option<TenantRole>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT role::text FROM memberships WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
        )
        .bind(tenant)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| TenantRole::parse(&r))
        .transpose()?)
    }
}

#[async_trait]
impl Tenants for TenantsBackend {
    #[tracing::instrument(skip_all)]
    async fn list(&self, req: &RequestCtx) -> Result<Vec<TenantSummary>, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<TenantRow> = sqlx::query_as(&format!(
                "SELECT {TENANT_COLUMNS} FROM tenants t ORDER BY lower(t.name)"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(Into::into).collect())
        })
        .await
    }

    async fn get(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<TenantSummary, AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let t = self.fetch(&mut tx, tenant_id).await?;
            tx.commit().await?;
            Ok(t)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn create(&self, req: &RequestCtx, name: &str) -> Result<TenantSummary, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let name = TenantName::parse(name)?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let id: Uuid =
                sqlx::query_scalar("INSERT INTO tenants (name) VALUES ($1) RETURNING id")
                    .bind(&name.0)
                    .fetch_one(&mut *tx)
                    .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("tenant.create", "tenant", id)
                    .tenant(id)
                    .after(json!({ "name": name.0 })),
            )
            .await?;
            let t = self.fetch(&mut tx, id).await?;
            self.accounts.commit(tx).await?;
            Ok(t)
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn rename(&self, req: &RequestCtx, tenant_id: Uuid, name: &str) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let name = TenantName::parse(name)?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let before = self.fetch(&mut tx, tenant_id).await?;
            sqlx::query("UPDATE tenants SET name = $2 WHERE id = $1")
                .bind(tenant_id)
                .bind(&name.0)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("tenant.rename", "tenant", tenant_id)
                    .tenant(tenant_id)
                    .before(json!({ "name": before.name }))
                    .after(json!({ "name": name.0 })),
            )
            .await?;
            self.accounts.commit(tx).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn set_suspended(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        suspended: bool,
    ) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let before = self.fetch(&mut tx, tenant_id).await?;
            sqlx::query("UPDATE tenants SET suspended_at = CASE WHEN $2 THEN coalesce(suspended_at, now()) END WHERE id = $1")
                .bind(tenant_id)
                .bind(suspended)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if suspended {
                        "tenant.suspend"
                    } else {
                        "tenant.reactivate"
                    },
                    "tenant",
                    tenant_id,
                )
                .tenant(tenant_id)
                .before(json!({ "suspended": before.suspended }))
                .after(json!({ "suspended": suspended })),
            )
            .await?;
            self.accounts.commit(tx).await
    }).await
    }

    async fn members(&self, req: &RequestCtx, tenant_id: Uuid) -> Result<Vec<Member>, AppError> {
        seam(async move {
            require_admin_of(req, tenant_id)?;
            #[derive(sqlx::FromRow)]
            struct Row {
                user_id: Uuid,
                email: String,
                display_name: String,
                role: String,
                disabled: bool,
            }
            // Tenant scope only (no fleet bypass): row-level security keeps this to one tenant.
            let mut tx = db::begin(&self.pool, Scope::tenant(tenant_id)).await?;
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT m.user_id, u.email, u.display_name, m.role::text AS role, u.disabled_at IS NOT NULL AS disabled
                 FROM memberships m JOIN users u ON u.id = m.user_id
                 WHERE m.tenant_id = $1 ORDER BY lower(u.display_name), lower(u.email)",
            )
            .bind(tenant_id)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.into_iter()
                .map(|r| {
                    Ok(Member {
                        user_id: r.user_id,
                        email: r.email,
                        display_name: r.display_name,
                        role: TenantRole::parse(&r.role)?,
                        disabled: r.disabled,
                    })
                })
                .collect()
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn set_member_role(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_id: Uuid,
        role: &str,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            let role = TenantRole::parse(role)?;
            if actor.user_id == user_id && !actor.fleet_admin && role != TenantRole::TenantAdmin {
                return Err(AppError::Conflict(
                    "You cannot remove your own admin role; ask another admin.".into(),
                )
                .into());
            }
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let before = self
                .member_role(&mut tx, tenant_id, user_id)
                .await?
                .ok_or_else(|| AppError::NotFound("Member".into()))?;
            sqlx::query(
            "UPDATE memberships SET role = $3::tenant_role WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant_id)
        .bind(user_id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("member.role", "user", user_id)
                    .tenant(tenant_id)
                    .before(json!({ "role": before.as_str() }))
                    .after(json!({ "role": role.as_str() })),
            )
            .await?;
            self.accounts.commit(tx).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn remove_member(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        user_id: Uuid,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            if actor.user_id == user_id && !actor.fleet_admin {
                return Err(AppError::Conflict(
                    "You cannot remove yourself; ask another admin.".into(),
                )
                .into());
            }
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let before = self
                .member_role(&mut tx, tenant_id, user_id)
                .await?
                .ok_or_else(|| AppError::NotFound("Member".into()))?;
            sqlx::query("DELETE FROM memberships WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            // Their sessions stay: they may belong to other tenants. Access to this one ends with
            // the commit, which retires every cached actor; open live streams re-check theirs.
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("member.remove", "user", user_id)
                    .tenant(tenant_id)
                    .before(json!({ "role": before.as_str() })),
            )
            .await?;
            self.accounts.commit(tx).await
        })
        .await
    }
}

/// The active tenants a page offers as a choice: every one for fleet admins (`all`), else
/// those of `ids` (the ones the actor administers), by name.
pub async fn choosable(tx: &mut db::Tx, all: bool, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, name FROM tenants WHERE suspended_at IS NULL AND ($1 OR id = ANY($2)) ORDER BY name",
    )
    .bind(all)
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?)
}
