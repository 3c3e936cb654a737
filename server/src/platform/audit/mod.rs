//! The audit trail: one row per state change, written in the changing transaction and sealed
//! into its tenant's hash chain at commit (`chain`, `integrity`, migration 37).
pub mod chain;
pub mod command;
pub mod integrity;

use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Error, Result};
use crate::platform::list::{self, asc, desc, Order, Window};
use app::audit::{AuditEntry, AuditFilter, ChainState};
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
    /// The checkpoints' signing key: verification trusts its public half.
    pub key: std::sync::Arc<ed25519_dalek::SigningKey>,
    pub clock: std::sync::Arc<dyn crate::platform::clock::Clock>,
}

#[derive(sqlx::FromRow)]
struct ChainRow {
    chain: Uuid,
    tenant_name: Option<String>,
    rows: i64,
    checkpoint_seq: Option<i64>,
    checkpoint_at: Option<time::OffsetDateTime>,
    checked_at: Option<time::OffsetDateTime>,
    intact_to: Option<i64>,
    problem: Option<String>,
}

impl AuditBackend {
    async fn chain_states(&self, chains: Option<&[Uuid]>) -> Result<Vec<ChainState>> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let rows: Vec<ChainRow> = sqlx::query_as(
            "SELECT c.chain, t.name AS tenant_name, c.seq AS rows, k.seq AS checkpoint_seq,
                    k.at AS checkpoint_at, x.checked_at, x.intact_to, x.problem
             FROM audit_chains c
             LEFT JOIN tenants t ON t.id = c.chain
             LEFT JOIN LATERAL (SELECT seq, at FROM audit_checkpoints k
                                WHERE k.chain = c.chain ORDER BY seq DESC LIMIT 1) k ON true
             LEFT JOIN audit_checks x ON x.chain = c.chain
             WHERE $1::uuid[] IS NULL OR c.chain = ANY($1)
             ORDER BY c.chain <> $2, t.name, c.chain",
        )
        .bind(chains)
        .bind(chain::FLEET_CHAIN)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|r| ChainState {
                chain: r.chain,
                tenant_name: (r.chain != chain::FLEET_CHAIN).then(|| {
                    r.tenant_name
                        .unwrap_or_else(|| format!("Deleted tenant {}", r.chain))
                }),
                rows: r.rows,
                checkpoint_seq: r.checkpoint_seq,
                checkpoint_at: r.checkpoint_at,
                checked_at: r.checked_at,
                intact_to: r.intact_to,
                problem: r.problem,
            })
            .collect())
    }

    /// The sealed rows of the chains `req` may read (one tenant's when `tenant` is given),
    /// as JSON Lines or CSV, streamed from the database in chain and sequence order.
    pub async fn export(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
        csv: bool,
    ) -> std::result::Result<
        futures::stream::BoxStream<'static, std::result::Result<axum::body::Bytes, std::io::Error>>,
        AppError,
    > {
        let chains = crate::platform::authz::audit_chains(req.actor()?, tenant)?;
        let pool = self.pool.clone();
        let (send, recv) =
            tokio::sync::mpsc::channel::<std::result::Result<axum::body::Bytes, std::io::Error>>(8);
        tokio::spawn(async move {
            let failed = send.clone();
            if let Err(e) = export_rows(pool, chains, csv, send).await {
                tracing::warn!(error = %e, "audit export");
                let _ = failed
                    .send(Err(std::io::Error::other("the export stopped")))
                    .await;
            }
        });
        // Fused: the compression layer polls once more after the end.
        Ok(Box::pin(futures::StreamExt::fuse(futures::stream::unfold(
            recv,
            |mut r| async move { r.recv().await.map(|item| (item, r)) },
        ))))
    }

    /// The chains' signed checkpoints with the public key, as JSON for `audit verify
    /// --checkpoints`.
    pub async fn export_checkpoints(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
    ) -> std::result::Result<serde_json::Value, AppError> {
        let chains = crate::platform::authz::audit_chains(req.actor()?, tenant)?;
        seam(async move {
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let list = integrity::checkpoints(&mut tx, chains.as_deref()).await?;
            tx.commit().await?;
            Ok(serde_json::json!({
                "public_key": hex::encode(self.key.verifying_key().to_bytes()),
                "checkpoints": list,
            }))
        })
        .await
    }
}

async fn export_rows(
    pool: PgPool,
    chains: Option<Vec<Uuid>>,
    csv: bool,
    send: tokio::sync::mpsc::Sender<std::result::Result<axum::body::Bytes, std::io::Error>>,
) -> Result<()> {
    use futures::TryStreamExt;
    let mut tx = db::begin(&pool, Scope::fleet()).await?;
    let sql = format!(
        "SELECT {} FROM audit_log a WHERE a.seq IS NOT NULL AND ($1::uuid[] IS NULL OR a.chain = ANY($1))
         ORDER BY a.chain, a.seq",
        chain::SEALED_COLUMNS
    );
    let mut rows = sqlx::query_as::<_, chain::SealedRow>(&sql)
        .bind(chains)
        .fetch(&mut *tx);
    let csv_writer = |headers: bool| {
        csv::WriterBuilder::new()
            .has_headers(headers)
            .from_writer(Vec::with_capacity(64 * 1024))
    };
    let mut writer = csv_writer(true);
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(row) = rows.try_next().await? {
        if csv {
            writer.serialize(&row).map_err(Error::other)?;
        } else {
            serde_json::to_writer(&mut buf, &row).map_err(Error::other)?;
            buf.push(b'\n');
        }
        if csv && writer.get_ref().len() >= 60 * 1024 {
            writer.flush().map_err(Error::other)?;
            buf = std::mem::replace(&mut writer, csv_writer(false))
                .into_inner()
                .map_err(Error::other)?;
        }
        if buf.len() >= 60 * 1024 {
            let chunk = axum::body::Bytes::from(std::mem::take(&mut buf));
            if send.send(Ok(chunk)).await.is_err() {
                return Ok(()); // the client went away
            }
        }
    }
    if csv {
        buf = writer.into_inner().map_err(Error::other)?;
    }
    if !buf.is_empty() {
        let _ = send.send(Ok(axum::body::Bytes::from(buf))).await;
    }
    Ok(())
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

    async fn chains(
        &self,
        req: &RequestCtx,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<ChainState>, AppError> {
        let chains = crate::platform::authz::audit_chains(req.actor()?, tenant_id)?;
        seam(self.chain_states(chains.as_deref())).await
    }

    #[tracing::instrument(skip_all)]
    async fn verify(
        &self,
        req: &RequestCtx,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<ChainState>, AppError> {
        let chains = crate::platform::authz::audit_chains(req.actor()?, tenant_id)?;
        seam(async move {
            let trusted = self.key.verifying_key();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let outcomes = integrity::verify(
                &mut tx,
                integrity::Verify {
                    chains: chains.clone(),
                    trusted: Some(&trusted),
                    ..Default::default()
                },
            )
            .await?;
            let now = self.clock.now();
            for o in &outcomes {
                integrity::record(&mut tx, o, now).await?;
            }
            tx.commit().await?;
            self.chain_states(chains.as_deref()).await
        })
        .await
    }
}
