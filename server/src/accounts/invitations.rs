//! Joining a tenant: the backend of the `Invitations` seam. A tenant admin's "add member"
//! makes an invitation and answers the same whether the address has an account or not, so it
//! reveals nothing about other tenants' people; membership starts only with the invitee's
//! consent: accepted while signed in, or, for a new address, by creating the account with the
//! invitation's code.
use crate::accounts::email::{DisplayName, Email};
use crate::accounts::tenants::{require_admin_of, scope_for};
use crate::accounts::{password, sessions, throttle, AccountsBackend};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::account::TenantRole;
use app::error::{AllValid, AppError};
use app::seam::{Invitations, RequestCtx};
use app::tenant::{JoinForm, MyInvitation, NewInvitation, PendingInvitation};
use async_trait::async_trait;
use base64::Engine as _;
use serde_json::json;
use sha2::Digest as _;
use sqlx::PgPool;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// How long an invitation stays open.
const VALID_FOR: Duration = Duration::days(14);

pub struct InvitationsBackend {
    pub pool: PgPool,
    pub accounts: AccountsBackend,
}

/// Codes are random (about 115 bits, see `password::one_time`), so a fast hash is enough to
/// keep them out of the database.
fn code_hash(code: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(code.trim()))
}

#[derive(sqlx::FromRow)]
struct Open {
    id: Uuid,
    tenant_id: Uuid,
    role: String,
}

impl InvitationsBackend {
    fn now(&self) -> OffsetDateTime {
        self.accounts.clock.now()
    }

    async fn close(tx: &mut db::Tx, id: Uuid, outcome: &str, now: OffsetDateTime) -> Result<()> {
        sqlx::query("UPDATE invitations SET closed_at = $2, outcome = $3 WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(outcome)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn add_membership(tx: &mut db::Tx, inv: &Open, user_id: Uuid) -> Result<()> {
        // Already a member (added meanwhile by another invitation): nothing to add.
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3::tenant_role)
             ON CONFLICT (tenant_id, user_id) DO NOTHING",
        )
        .bind(inv.tenant_id)
        .bind(user_id)
        .bind(&inv.role)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Invitations for InvitationsBackend {
    #[tracing::instrument(skip_all)]
    async fn invite(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
        email: &str,
        display_name: &str,
        role: &str,
    ) -> Result<NewInvitation, AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            let name = if display_name.trim().is_empty() {
                Ok(None)
            } else {
                DisplayName::parse(display_name, "display_name").map(Some)
            };
            let (email, name, role) = (Email::parse(email, "email"), name, TenantRole::parse(role)).all_valid()?;
            let now = self.now();
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let tenant: Option<String> = sqlx::query_scalar("SELECT name FROM tenants WHERE id = $1")
                .bind(tenant_id)
                .fetch_optional(&mut *tx)
                .await?;
            tenant.ok_or_else(|| AppError::NotFound("Tenant".into()))?;
            // Members of this tenant are on the admin's own list already: saying so reveals nothing.
            let member: Option<Uuid> = sqlx::query_scalar(
                "SELECT m.user_id FROM memberships m JOIN users u ON u.id = m.user_id
                 WHERE m.tenant_id = $1 AND lower(u.email) = $2",
            )
            .bind(tenant_id)
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if member.is_some() {
                return Err(AppError::field("email", "That person is already a member.").into());
            }
            // A new invitation to the same address replaces the open one (and its code).
            sqlx::query(
                "UPDATE invitations SET closed_at = $3, outcome = 'replaced'
                 WHERE tenant_id = $1 AND email = $2 AND closed_at IS NULL",
            )
            .bind(tenant_id)
            .bind(email.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let code = password::one_time();
            let expires_at = now + VALID_FOR;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO invitations (tenant_id, email, display_name, role, code_hash, invited_by, created_at, expires_at)
                 VALUES ($1, $2, $3, $4::tenant_role, $5, $6, $7, $8) RETURNING id",
            )
            .bind(tenant_id)
            .bind(email.as_str())
            .bind(name.as_ref().map(|n| n.as_str()).unwrap_or_default())
            .bind(role.as_str())
            .bind(code_hash(&code))
            .bind(actor.user_id)
            .bind(now)
            .bind(expires_at)
            .fetch_one(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("member.invite", "invitation", id)
                    .tenant(tenant_id)
                    .after(json!({ "email": email.as_str(), "role": role.as_str() })),
            )
            .await?;
            tx.commit().await?;
            Ok(NewInvitation {
                email: email.as_str().to_string(),
                code,
                expires_at,
            })
    }).await
    }

    async fn pending(
        &self,
        req: &RequestCtx,
        tenant_id: Uuid,
    ) -> Result<Vec<PendingInvitation>, AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let rows: Vec<(Uuid, String, String, Option<String>, OffsetDateTime)> = sqlx::query_as(
                "SELECT i.id, i.email, i.role::text, u.email, i.expires_at
             FROM invitations i LEFT JOIN users u ON u.id = i.invited_by
             WHERE i.tenant_id = $1 AND i.closed_at IS NULL AND i.expires_at > $2
             ORDER BY i.created_at DESC",
            )
            .bind(tenant_id)
            .bind(self.now())
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            rows.into_iter()
                .map(|(id, email, role, invited_by, expires_at)| {
                    Ok(PendingInvitation {
                        id,
                        email,
                        role: TenantRole::parse(&role)?,
                        invited_by,
                        expires_at,
                    })
                })
                .collect()
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn revoke(&self, req: &RequestCtx, tenant_id: Uuid, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = require_admin_of(req, tenant_id)?;
            let mut tx = db::begin(&self.pool, scope_for(actor, tenant_id)).await?;
            let email: Option<String> = sqlx::query_scalar(
                "SELECT email FROM invitations WHERE id = $1 AND tenant_id = $2 AND closed_at IS NULL FOR UPDATE",
            )
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
            let email = email.ok_or_else(|| AppError::NotFound("Invitation".into()))?;
            Self::close(&mut tx, id, "revoked", self.now()).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("member.invite_revoke", "invitation", id)
                    .tenant(tenant_id)
                    .before(json!({ "email": email })),
            )
            .await?;
            Ok(tx.commit().await?)
    }).await
    }

    async fn mine(&self, req: &RequestCtx) -> Result<Vec<MyInvitation>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            // Across tenants: the address is the authorisation.
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<(Uuid, String, String, Option<String>, OffsetDateTime)> = sqlx::query_as(
                "SELECT i.id, t.name, i.role::text, u.email, i.expires_at
                 FROM invitations i JOIN tenants t ON t.id = i.tenant_id
                 LEFT JOIN users u ON u.id = i.invited_by
                 WHERE i.email = lower($1) AND i.closed_at IS NULL AND i.expires_at > $2
                   AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.tenant_id = i.tenant_id AND m.user_id = $3)
                 ORDER BY i.created_at",
            )
            .bind(&actor.email)
            .bind(self.now())
            .bind(actor.user_id)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            rows.into_iter()
                .map(|(id, tenant_name, role, invited_by, expires_at)| {
                    Ok(MyInvitation {
                        id,
                        tenant_name,
                        role: TenantRole::parse(&role)?,
                        invited_by,
                        expires_at,
                    })
                })
                .collect()
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn answer(&self, req: &RequestCtx, id: Uuid, accept: bool) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let now = self.now();
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let inv: Option<Open> = sqlx::query_as(
                "SELECT id, tenant_id, role::text AS role FROM invitations
                 WHERE id = $1 AND email = lower($2) AND closed_at IS NULL AND expires_at > $3 FOR UPDATE",
            )
            .bind(id)
            .bind(&actor.email)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            // Someone else's invitation is as good as none.
            let inv = inv.ok_or_else(|| AppError::NotFound("Invitation".into()))?;
            if accept {
                Self::add_membership(&mut tx, &inv, actor.user_id).await?;
            }
            Self::close(
                &mut tx,
                inv.id,
                if accept { "accepted" } else { "declined" },
                now,
            )
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if accept {
                        "member.join"
                    } else {
                        "member.decline"
                    },
                    "user",
                    actor.user_id,
                )
                .tenant(inv.tenant_id)
                .after(json!({ "invitation": inv.id, "role": inv.role })),
            )
            .await?;
            self.accounts.commit(tx).await
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn join(&self, req: &RequestCtx, form: JoinForm) -> Result<(), AppError> {
        seam(async move {
            if req.actor.is_some() {
                return Err(AppError::Conflict(
                    "You are signed in: accept invitations on your account page.".into(),
                ).into());
            }
            let email = Email::parse(&form.email, "email");
            let code = if form.code.trim().is_empty() {
                Err(AppError::field(
                    "code",
                    "Enter the invitation code you were given.",
                ))
            } else {
                Ok(form.code.trim().to_string())
            };
            let name = DisplayName::parse(&form.display_name, "display_name");
            // The policy refuses a password built from the address.
            let typed_email = email.as_ref().map(|e| e.as_str()).unwrap_or_default();
            let pass = password::check_policy(&form.password, typed_email, "password").and_then(|_| {
                if form.password == form.confirm_password {
                    Ok(())
                } else {
                    Err(AppError::field(
                        "confirm_password",
                        "The two passwords differ.",
                    ))
                }
            });
            let (email, code, name, ()) = (email, code, name, pass).all_valid()?;
            let now = self.now();
            // Codes cannot be guessed, but tries are counted like sign-ins all the same.
            let limits = self.accounts.limits;
            throttle::check(&self.pool, limits, email.as_str(), req.client_addr, now).await?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let inv: Option<Open> = sqlx::query_as(
                "SELECT id, tenant_id, role::text AS role FROM invitations
                 WHERE code_hash = $1 AND email = $2 AND closed_at IS NULL AND expires_at > $3 FOR UPDATE",
            )
            .bind(code_hash(&code))
            .bind(email.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(inv) = inv else {
                db::done(tx);
                throttle::record_failure(&self.pool, email.as_str(), req.client_addr, now).await?;
                return Err(AppError::field(
                    "code",
                    "That code is not an open invitation for this address (it may have expired, been replaced or used).",
                ).into());
            };
            let existing: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = $1")
                    .bind(email.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if existing.is_some() {
                // Only the holder of a valid code for this address learns this, and they are
                // the person invited (or whoever they gave the code to).
                return Err(AppError::field(
                    "email",
                    "This address already has an account: sign in with it and accept the invitation on your account page.",
                ).into());
            }
            let hash = self.accounts.hasher.hash(&form.password).await?;
            let user_id: Uuid = sqlx::query_scalar(
                "INSERT INTO users (email, display_name, password_hash, fleet_admin, must_change_password)
                 VALUES ($1, $2, $3, false, false) RETURNING id",
            )
            .bind(email.as_str())
            .bind(name.as_str())
            .bind(hash)
            .fetch_one(&mut *tx)
            .await?;
            Self::add_membership(&mut tx, &inv, user_id).await?;
            Self::close(&mut tx, inv.id, "accepted", now).await?;
            let origin = Origin {
                actor_id: Some(user_id),
                actor_email: Some(email.as_str().to_string()),
                client_addr: req.client_addr,
            };
            audit::record(
                &mut tx,
                &origin,
                Event::new("user.create", "user", user_id)
                    .tenant(inv.tenant_id)
                    .after(json!({ "email": email.as_str(), "display_name": name.as_str(), "invitation": inv.id })),
            )
            .await?;
            audit::record(
                &mut tx,
                &origin,
                Event::new("member.join", "user", user_id)
                    .tenant(inv.tenant_id)
                    .after(json!({ "invitation": inv.id, "role": inv.role })),
            )
            .await?;
            self.accounts.commit(tx).await?;
            sessions::start(
                &self.pool,
                &req.session,
                user_id,
                req.client_addr,
                req.user_agent.as_deref(),
                now,
            )
            .await?;
            Ok(())
    }).await
    }
}
