//! Users, sign-in, passwords and sessions: the backend of the `Accounts` seam.
pub mod email;
pub mod invitations;
pub mod password;
pub mod sessions;
pub mod ssh_keys;
pub mod tenants;
pub mod throttle;
pub mod two_factor;

use crate::platform::audit::{self, Event, Origin};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::account::{OneTimePassword, SessionInfo, TenantRole};
use app::error::{AllValid, AppError};
use app::seam::{Accounts, RequestCtx};
use app::user::UserSummary;
use app::Page;
use async_trait::async_trait;
use email::{DisplayName, Email};
use password::Hasher;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

pub const USERS_PER_PAGE: u32 = 50;

#[derive(Clone)]
pub struct AccountsBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub hasher: Hasher,
    pub limits: throttle::Limits,
    pub cache: Arc<sessions::ActorCache>,
}

impl AccountsBackend {
    /// Commits a change and retires every cached actor it may have altered.
    pub async fn commit(&self, tx: db::Tx) -> Result<()> {
        tx.commit().await?;
        self.cache.invalidate_all();
        Ok(())
    }

    /// Creates an account inside `tx`, with `password` or a fresh one-time password. `tenant`
    /// is the tenant it is created for (so that tenant's admins see it in their audit trail).
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_user(
        &self,
        tx: &mut db::Tx,
        origin: &Origin,
        tenant: Option<Uuid>,
        email: &Email,
        name: &DisplayName,
        fleet_admin: bool,
        password: Option<&str>,
    ) -> Result<OneTimePassword> {
        let password = password
            .map(str::to_owned)
            .unwrap_or_else(password::one_time);
        let hash = self.hasher.hash(&password).await?;
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO users (email, display_name, password_hash, fleet_admin, must_change_password)
             VALUES ($1, $2, $3, $4, true) RETURNING id",
        )
        .bind(email.as_str())
        .bind(name.as_str())
        .bind(hash)
        .bind(fleet_admin)
        .fetch_one(&mut **tx)
        .await?;
        let mut event = Event::new("user.create", "user", id).after(json!({
            "email": email.as_str(), "display_name": name.as_str(), "fleet_admin": fleet_admin
        }));
        event.tenant_id = tenant;
        audit::record(tx, origin, event).await?;
        Ok(OneTimePassword {
            user_id: id,
            email: email.as_str().to_string(),
            password,
        })
    }

    /// Starts the session of a sign-in whose factors were all accepted, and audits it.
    async fn signed_in(
        &self,
        req: &RequestCtx,
        user: Uuid,
        account: String,
        factor: Option<two_factor::Factor>,
        now: time::OffsetDateTime,
    ) -> Result<()> {
        let session_id = sessions::start(
            &self.pool,
            &req.session,
            user,
            req.client_addr,
            req.user_agent.as_deref(),
            now,
        )
        .await?;
        let mut tx = db::begin(
            &self.pool,
            Scope {
                user: Some(user),
                ..Scope::default()
            },
        )
        .await?;
        let origin = Origin {
            actor_id: Some(user),
            actor_email: Some(account),
            client_addr: req.client_addr,
        };
        let mut event = Event::new("session.login", "session", session_id);
        if let Some(f) = factor {
            event = event.after(json!({ "second_factor": f.name() }));
        }
        audit::record(&mut tx, &origin, event).await?;
        self.commit(tx).await
    }

    async fn user_exists(&self, tx: &mut db::Tx, user_id: Uuid) -> Result<bool> {
        let found: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                .bind(user_id)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(found.is_some())
    }
}

#[derive(sqlx::FromRow)]
struct Credentials {
    id: Uuid,
    password_hash: String,
    disabled: bool,
    two_factor: bool,
}

/// Whose password was accepted, while the sign-in waits for the second factor (kept in the
/// browser's session for a few minutes).
#[derive(serde::Serialize, serde::Deserialize)]
struct AwaitingCode {
    user_id: Uuid,
    account: String,
    at: i64,
}

fn two_factor_wrong() -> AppError {
    AppError::field(
        "code",
        "That code is not right, or it was used already: enter the code your app shows now.",
    )
}

const AWAITING_CODE: &str = "awaiting_code";
/// How long a sign-in waits for its code.
const CODE_WAIT_SECONDS: i64 = 300;

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    display_name: String,
    fleet_admin: bool,
    disabled: bool,
    must_change_password: bool,
    created_at: time::OffsetDateTime,
    tenants: sqlx::types::Json<Vec<(String, TenantRole)>>,
    total: i64,
}

#[async_trait]
impl Accounts for AccountsBackend {
    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        req: &RequestCtx,
        email: &str,
        password: &str,
    ) -> Result<app::account::SignIn, AppError> {
        seam(async move {
            let account = email.trim().to_lowercase();
            let mut missing = Vec::new();
            if account.is_empty() {
                missing.push(app::error::FieldError {
                    field: "email".into(),
                    message: "Enter your e-mail address.".into(),
                });
            }
            if password.is_empty() {
                missing.push(app::error::FieldError {
                    field: "password".into(),
                    message: "Enter your password.".into(),
                });
            }
            if !missing.is_empty() {
                return Err(AppError::Invalid(missing).into());
            }
            if account.len() > 254 || password.len() > 4 * password::MAX_LEN {
                return Err(AppError::LoginFailed.into());
            }
            let now = self.clock.now();
            let verdict =
                throttle::check(&self.pool, self.limits, &account, req.client_addr, now).await?;
            if let throttle::Verdict::Slow(wait) = verdict {
                tokio::time::sleep(wait).await;
            }
            let creds: Option<Credentials> = sqlx::query_as(
                "SELECT id, password_hash, disabled_at IS NOT NULL AS disabled, totp_enabled_at IS NOT NULL AS two_factor
                 FROM users WHERE lower(email) = $1",
            )
            .bind(&account)
            .fetch_optional(&self.pool)
            .await?;
            let ok = self
                .hasher
                .verify(password, creds.as_ref().map(|c| c.password_hash.as_str()))
                .await?;
            let user = match creds {
                Some(c) if ok && !c.disabled => c,
                _ => {
                    throttle::record_failure(&self.pool, &account, req.client_addr, now).await?;
                    return Err(match verdict {
                        throttle::Verdict::Go => AppError::LoginFailed,
                        throttle::Verdict::Slow(_) => AppError::LoginSlowed,
                    }
                    .into());
                }
            };
            if user.two_factor {
                // No session yet: the code comes first (`login_code`).
                req.session
                    .insert(
                        AWAITING_CODE,
                        AwaitingCode {
                            user_id: user.id,
                            account,
                            at: now.unix_timestamp(),
                        },
                    )
                    .await
                    .map_err(crate::platform::error::Error::other)?;
                return Ok(app::account::SignIn::CodeNeeded);
            }
            self.signed_in(req, user.id, account, None, now).await?;
            Ok(app::account::SignIn::Done)
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn login_code(&self, req: &RequestCtx, code: &str) -> Result<(), AppError> {
        seam(async move {
            let now = self.clock.now();
            let waiting: Option<AwaitingCode> = req
                .session
                .get(AWAITING_CODE)
                .await
                .map_err(crate::platform::error::Error::other)?;
            let Some(w) = waiting.filter(|w| now.unix_timestamp() - w.at < CODE_WAIT_SECONDS) else {
                return Err(AppError::field(
                    "code",
                    "This sign-in has expired: sign in with your password again.",
                )
                .into());
            };
            if code.trim().is_empty() {
                return Err(AppError::field("code", "Enter the code from your authenticator app.").into());
            }
            if code.len() > 64 {
                return Err(two_factor_wrong().into());
            }
            let verdict =
                throttle::check(&self.pool, self.limits, &w.account, req.client_addr, now).await?;
            if let throttle::Verdict::Slow(wait) = verdict {
                tokio::time::sleep(wait).await;
            }
            let mut tx = db::begin(
                &self.pool,
                Scope {
                    user: Some(w.user_id),
                    ..Scope::default()
                },
            )
            .await?;
            let factor = two_factor::accept(&mut tx, w.user_id, code, now).await?;
            tx.commit().await?;
            let Some(factor) = factor else {
                throttle::record_failure(&self.pool, &w.account, req.client_addr, now).await?;
                return Err(match verdict {
                    throttle::Verdict::Go => two_factor_wrong(),
                    throttle::Verdict::Slow(_) => AppError::field(
                        "code",
                        "That code is not right. This account has had many failed sign-ins, so each attempt is answered more slowly for a while.",
                    ),
                }
                .into());
            };
            let _ = req.session.remove::<AwaitingCode>(AWAITING_CODE).await;
            self.signed_in(req, w.user_id, w.account, Some(factor), now).await?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn logout(&self, req: &RequestCtx) -> Result<(), AppError> {
        let ended = sessions::end(&self.pool, &req.session).await?;
        if let (Some(id), Some(_)) = (ended, req.actor.as_ref()) {
            let mut tx = db::begin(&self.pool, Scope::default()).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("session.logout", "session", id),
            )
            .await?;
            self.commit(tx).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        req: &RequestCtx,
        current: &str,
        new: &str,
        confirm: &str,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.any_actor()?;
            if current.is_empty() {
                return Err(AppError::field(
                    "current_password",
                    "Enter your current password.",
                ).into());
            }
            password::check_policy(new, &actor.email, "new_password")?;
            if new != confirm {
                return Err(AppError::field(
                    "confirm_password",
                    "The two new passwords differ.",
                ).into());
            }
            if new == current {
                return Err(AppError::field(
                    "new_password",
                    "Choose a password different from the current one.",
                ).into());
            }
            let now = self.clock.now();
            if let throttle::Verdict::Slow(wait) =
                throttle::check(&self.pool, self.limits, &actor.email, req.client_addr, now).await?
            {
                tokio::time::sleep(wait).await;
            }
            let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                .bind(actor.user_id)
                .fetch_one(&self.pool)
                .await?;
            if !self.hasher.verify(current, Some(&hash)).await? {
                throttle::record_failure(&self.pool, &actor.email, req.client_addr, now).await?;
                return Err(AppError::field(
                    "current_password",
                    "That is not your current password.",
                ).into());
            }
            let new_hash = self.hasher.hash(new).await?;
            let mut tx = db::begin(
                &self.pool,
                Scope {
                    user: Some(actor.user_id),
                    ..Scope::default()
                },
            )
            .await?;
            sqlx::query("UPDATE users SET password_hash = $2, must_change_password = false, updated_at = now() WHERE id = $1")
                .bind(actor.user_id)
                .bind(new_hash)
                .execute(&mut *tx)
                .await?;
            // A new password signs out every other device.
            sqlx::query("DELETE FROM user_sessions WHERE user_id = $1 AND id <> $2")
                .bind(actor.user_id)
                .bind(actor.session_id)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.password_change", "user", actor.user_id),
            )
            .await?;
            self.commit(tx).await?;
            sessions::rotate(&req.session).await
    }).await
    }

    async fn sessions(&self, req: &RequestCtx) -> Result<Vec<SessionInfo>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            #[derive(sqlx::FromRow)]
            struct Row {
                id: Uuid,
                created_at: time::OffsetDateTime,
                last_seen_at: time::OffsetDateTime,
                client_addr: Option<sqlx::types::ipnetwork::IpNetwork>,
                user_agent: Option<String>,
            }
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, created_at, last_seen_at, client_addr, user_agent FROM user_sessions
             WHERE user_id = $1 ORDER BY last_seen_at DESC",
            )
            .bind(actor.user_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| SessionInfo {
                    current: r.id == actor.session_id,
                    id: r.id,
                    created_at: r.created_at,
                    last_seen_at: r.last_seen_at,
                    client_addr: r.client_addr.map(|a| a.ip().to_string()),
                    user_agent: r.user_agent,
                })
                .collect())
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn end_session(&self, req: &RequestCtx, session_id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, Scope::default()).await?;
            let ended = sqlx::query("DELETE FROM user_sessions WHERE id = $1 AND user_id = $2")
                .bind(session_id)
                .bind(actor.user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if ended == 0 {
                return Err(AppError::NotFound("Session".into()).into());
            }
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("session.end", "session", session_id),
            )
            .await?;
            self.commit(tx).await
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        req: &RequestCtx,
        search: &str,
        page: u32,
    ) -> Result<Page<UserSummary>, AppError> {
        seam(async move {
            req.fleet_admin()?;
            if search.chars().count() > 254 {
                return Err(AppError::field("q", "Search for at most 254 characters.").into());
            }
            let page = page.max(1);
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<UserRow> = sqlx::query_as(
                "SELECT u.id, u.email, u.display_name, u.fleet_admin, u.disabled_at IS NOT NULL AS disabled,
                        u.must_change_password, u.created_at,
                        coalesce((SELECT jsonb_agg(jsonb_build_array(t.name, m.role) ORDER BY t.name)
                                  FROM memberships m JOIN tenants t ON t.id = m.tenant_id
                                  WHERE m.user_id = u.id), '[]'::jsonb) AS tenants,
                        count(*) OVER () AS total
                 FROM users u
                 WHERE $1 = '' OR u.email ILIKE '%' || $1 || '%' OR u.display_name ILIKE '%' || $1 || '%'
                 ORDER BY lower(u.email)
                 LIMIT $2 OFFSET $3",
            )
            .bind(crate::platform::list::escape_like(search.trim()))
            .bind(i64::from(USERS_PER_PAGE))
            .bind(i64::from(USERS_PER_PAGE) * i64::from(page - 1))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let total = rows.first().map(|r| r.total).unwrap_or(0);
            Ok(Page {
                items: rows
                    .into_iter()
                    .map(|r| UserSummary {
                        id: r.id,
                        email: r.email,
                        display_name: r.display_name,
                        fleet_admin: r.fleet_admin,
                        disabled: r.disabled,
                        must_change_password: r.must_change_password,
                        tenants: r.tenants.0,
                        created_at: r.created_at,
                    })
                    .collect(),
                page,
                per_page: USERS_PER_PAGE,
                total,
                before: None,
                after: None,
            })
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        req: &RequestCtx,
        email: &str,
        display_name: &str,
        fleet_admin: bool,
    ) -> Result<OneTimePassword, AppError> {
        req.fleet_admin()?;
        let email = Email::parse(email, "email");
        let name = DisplayName::parse(display_name, "display_name");
        let (email, name) = (email, name).all_valid()?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let otp = self
            .insert_user(
                &mut tx,
                &Origin::of(req),
                None,
                &email,
                &name,
                fleet_admin,
                None,
            )
            .await?;
        self.commit(tx).await?;
        Ok(otp)
    }

    #[tracing::instrument(skip_all)]
    async fn set_fleet_admin(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
        fleet_admin: bool,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.fleet_admin()?;
            if actor.user_id == user_id {
                return Err(AppError::Conflict(
                    "You cannot change your own fleet-admin rights.".into(),
                ).into());
            }
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            if !self.user_exists(&mut tx, user_id).await? {
                return Err(AppError::NotFound("User".into()).into());
            }
            let before: bool = sqlx::query_scalar("UPDATE users u SET fleet_admin = $2, updated_at = now() FROM users old
                                                   WHERE u.id = $1 AND old.id = u.id RETURNING old.fleet_admin")
                .bind(user_id)
                .bind(fleet_admin)
                .fetch_one(&mut *tx)
                .await?;
            // New privileges take a new sign-in (and so a new session id).
            sessions::end_all_for(&mut tx, user_id).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.fleet_admin", "user", user_id)
                    .before(json!({ "fleet_admin": before }))
                    .after(json!({ "fleet_admin": fleet_admin })),
            )
            .await?;
            self.commit(tx).await
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn set_user_disabled(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
        disabled: bool,
    ) -> Result<(), AppError> {
        seam(async move {
            let actor = req.fleet_admin()?;
            if actor.user_id == user_id {
                return Err(AppError::Conflict(
                    "You cannot disable your own account.".into(),
                ).into());
            }
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            if !self.user_exists(&mut tx, user_id).await? {
                return Err(AppError::NotFound("User".into()).into());
            }
            let was: bool =
                sqlx::query_scalar("SELECT disabled_at IS NOT NULL FROM users WHERE id = $1")
                    .bind(user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query("UPDATE users SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) END, updated_at = now() WHERE id = $1")
                .bind(user_id)
                .bind(disabled)
                .execute(&mut *tx)
                .await?;
            if disabled {
                sessions::end_all_for(&mut tx, user_id).await?;
            }
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new(
                    if disabled {
                        "user.disable"
                    } else {
                        "user.enable"
                    },
                    "user",
                    user_id,
                )
                .before(json!({ "disabled": was }))
                .after(json!({ "disabled": disabled })),
            )
            .await?;
            self.commit(tx).await
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_password(
        &self,
        req: &RequestCtx,
        user_id: Uuid,
    ) -> Result<OneTimePassword, AppError> {
        seam(async move {
            let actor = req.fleet_admin()?;
            if actor.user_id == user_id {
                return Err(AppError::Conflict(
                    "Change your own password on your account page.".into(),
                )
                .into());
            }
            let password = password::one_time();
            let hash = self.hasher.hash(&password).await?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let email: Option<String> = sqlx::query_scalar(
            "UPDATE users SET password_hash = $2, must_change_password = true, updated_at = now()
             WHERE id = $1 RETURNING email",
        )
        .bind(user_id)
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
            let email = email.ok_or_else(|| AppError::NotFound("User".into()))?;
            sessions::end_all_for(&mut tx, user_id).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.password_reset", "user", user_id),
            )
            .await?;
            self.commit(tx).await?;
            Ok(OneTimePassword {
                user_id,
                email,
                password,
            })
        })
        .await
    }
}
