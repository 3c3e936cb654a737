//! Two-factor sign-in: RFC 6238 codes (`totp-rs`) from an authenticator app the user sets up
//! with a QR code (`qrcode`), recovery codes stored as hashes, and the tenants' and fleet's
//! requirement. The sign-in step itself is `AccountsBackend::login_code`.
use super::AccountsBackend;
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz;
use crate::platform::db::{self, Scope, Tx};
use crate::platform::error::{seam, Error, Result};
use app::error::AppError;
use app::seam::{RequestCtx, TwoFactor};
use app::two_factor::{Enrolment, RecoveryCodes, TwoFactorStatus};
use async_trait::async_trait;
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

const ISSUER: &str = "Concierge";
/// Seconds per code.
const STEP: u64 = 30;
const RECOVERY_CODES: usize = 10;

fn totp(secret: &[u8], email: &str) -> Result<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        STEP,
        secret.to_vec(),
        Some(ISSUER.into()),
        email.into(),
    )
    .map_err(Error::other)
}

/// A code as typed: spaces and dashes dropped, lower case.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The 30-second step whose code `code` is, within one step of `now` (clocks drift).
pub fn matching_step(secret: &[u8], code: &str, now: OffsetDateTime) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "check").ok()?;
    let current = u64::try_from(now.unix_timestamp()).ok()? / STEP;
    (current.saturating_sub(1)..=current + 1)
        .find(|s| {
            let expected = t.generate(s * STEP);
            // Compared in full, whatever the first difference.
            expected
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
        .and_then(|s| i64::try_from(s).ok())
}

fn hash_code(code: &str) -> Vec<u8> {
    Sha256::digest(normalise(code).as_bytes()).to_vec()
}

/// Ten new recovery codes (60 random bits each, `xxxx-xxxx-xxxx`), replacing the old ones.
async fn replace_recovery_codes(tx: &mut Tx, user: Uuid) -> Result<Vec<String>> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..12)
                .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
                .collect();
            format!("{}-{}-{}", &chars[..4], &chars[4..8], &chars[8..])
        })
        .collect();
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user)
        .execute(&mut **tx)
        .await?;
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| hash_code(c)).collect();
    sqlx::query(
        "INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, h FROM unnest($2::bytea[]) h",
    )
    .bind(user)
    .bind(&hashes)
    .execute(&mut **tx)
    .await?;
    Ok(codes)
}

/// How a second factor was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Factor {
    Code,
    RecoveryCode,
}

impl Factor {
    pub fn name(self) -> &'static str {
        match self {
            Factor::Code => "code",
            Factor::RecoveryCode => "recovery code",
        }
    }
}

/// Accepts `code` for `user` (locked in `tx`): a current code not used before (each step's
/// code signs in once), or an unused recovery code, which is then spent.
pub async fn accept(
    tx: &mut Tx,
    user: Uuid,
    code: &str,
    now: OffsetDateTime,
) -> Result<Option<Factor>> {
    let row: Option<(Option<Vec<u8>>, Option<i64>)> =
        sqlx::query_as("SELECT totp_secret, totp_last_step FROM users WHERE id = $1 FOR UPDATE")
            .bind(user)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((Some(secret), last)) = row else {
        return Ok(None);
    };
    let code = normalise(code);
    if let Some(step) = matching_step(&secret, &code, now) {
        if last.is_some_and(|l| step <= l) {
            return Ok(None); // replayed
        }
        sqlx::query("UPDATE users SET totp_last_step = $2 WHERE id = $1")
            .bind(user)
            .bind(step)
            .execute(&mut **tx)
            .await?;
        return Ok(Some(Factor::Code));
    }
    let spent = sqlx::query(
        "UPDATE recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user)
    .bind(hash_code(&code))
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok((spent == 1).then_some(Factor::RecoveryCode))
}

/// Whether `tenant` (or, without one, the fleet) requires a second factor; `lock` holds the
/// row for a change. `None`: no such tenant.
async fn policy_of(tx: &mut Tx, tenant: Option<Uuid>, lock: bool) -> Result<Option<bool>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    Ok(match tenant {
        Some(t) => {
            sqlx::query_scalar(&format!(
                "SELECT require_two_factor FROM tenants WHERE id = $1{lock}"
            ))
            .bind(t)
            .fetch_optional(&mut **tx)
            .await?
        }
        None => {
            sqlx::query_scalar(&format!(
                "SELECT require_two_factor FROM fleet_settings{lock}"
            ))
            .fetch_optional(&mut **tx)
            .await?
        }
    })
}

fn wrong_code() -> AppError {
    AppError::field(
        "code",
        "That code is not right, or it was used already: enter the current code from your app.",
    )
}

pub struct TwoFactorBackend {
    pub accounts: AccountsBackend,
}

impl TwoFactorBackend {
    async fn user_tx(&self, user: Uuid) -> Result<Tx> {
        db::begin(
            &self.accounts.pool,
            Scope {
                user: Some(user),
                ..Scope::default()
            },
        )
        .await
    }

    /// Who requires a second factor of `user`.
    async fn required_by(&self, tx: &mut Tx, user: Uuid) -> Result<Vec<String>> {
        let mut by: Vec<String> = vec![];
        let fleet: bool = sqlx::query_scalar("SELECT require_two_factor FROM fleet_settings")
            .fetch_one(&mut **tx)
            .await?;
        if fleet {
            by.push("all of Concierge".into());
        }
        let tenants: Vec<String> = sqlx::query_scalar(
            "SELECT t.name FROM memberships m JOIN tenants t ON t.id = m.tenant_id
             WHERE m.user_id = $1 AND t.require_two_factor AND t.suspended_at IS NULL ORDER BY t.name",
        )
        .bind(user)
        .fetch_all(&mut **tx)
        .await?;
        by.extend(tenants);
        Ok(by)
    }
}

#[async_trait]
impl TwoFactor for TwoFactorBackend {
    async fn status(&self, req: &RequestCtx) -> Result<TwoFactorStatus, AppError> {
        let actor = req.any_actor()?;
        seam(async move {
            let mut tx = self.user_tx(actor.user_id).await?;
            let (enabled, left): (bool, i64) = sqlx::query_as(
                "SELECT totp_enabled_at IS NOT NULL,
                        (SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL)
                 FROM users WHERE id = $1",
            )
            .bind(actor.user_id)
            .fetch_one(&mut *tx)
            .await?;
            let required_by = self.required_by(&mut tx, actor.user_id).await?;
            tx.commit().await?;
            Ok(TwoFactorStatus {
                enabled,
                required_by,
                recovery_codes_left: left,
            })
        })
        .await
    }

    async fn start(&self, req: &RequestCtx) -> Result<Enrolment, AppError> {
        let actor = req.any_actor()?;
        seam(async move {
            let mut tx = self.user_tx(actor.user_id).await?;
            let enabled: bool = sqlx::query_scalar(
                "SELECT totp_enabled_at IS NOT NULL FROM users WHERE id = $1 FOR UPDATE",
            )
            .bind(actor.user_id)
            .fetch_one(&mut *tx)
            .await?;
            if enabled {
                return Err(AppError::Conflict(
                    "Two-factor sign-in is on already: turn it off first to move it to another app."
                        .into(),
                )
                .into());
            }
            let mut secret = vec![0u8; 20];
            rand::fill(secret.as_mut_slice());
            sqlx::query("UPDATE users SET totp_pending = $2 WHERE id = $1")
                .bind(actor.user_id)
                .bind(&secret)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let t = totp(&secret, &actor.email)?;
            let uri = t.get_url();
            let qr_svg = qrcode::QrCode::new(uri.as_bytes())
                .map_err(Error::other)?
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            let base32 = t.get_secret_base32();
            let secret = base32
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            Ok(Enrolment {
                secret,
                uri,
                qr_svg,
            })
        })
        .await
    }

    async fn confirm(&self, req: &RequestCtx, code: &str) -> Result<RecoveryCodes, AppError> {
        let actor = req.any_actor()?;
        seam(async move {
            let now = self.accounts.clock.now();
            let mut tx = self.user_tx(actor.user_id).await?;
            let pending: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT totp_pending FROM users WHERE id = $1 FOR UPDATE")
                    .bind(actor.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            let Some(secret) = pending else {
                return Err(AppError::field("code", "Start the setup first: no app is being set up.").into());
            };
            let Some(step) = matching_step(&secret, &normalise(code), now) else {
                return Err(AppError::field(
                    "code",
                    "That code does not match: check that your device's clock is right and enter the code the app shows now.",
                )
                .into());
            };
            sqlx::query(
                "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_enabled_at = $2,
                        totp_last_step = $3, updated_at = $2 WHERE id = $1",
            )
            .bind(actor.user_id)
            .bind(now)
            .bind(step)
            .execute(&mut *tx)
            .await?;
            let codes = replace_recovery_codes(&mut tx, actor.user_id).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.two_factor.enable", "user", actor.user_id)
                    .after(json!({ "recovery_codes": codes.len() })),
            )
            .await?;
            self.accounts.commit(tx).await?;
            Ok(RecoveryCodes { codes })
        })
        .await
    }

    async fn disable(&self, req: &RequestCtx, code: &str) -> Result<(), AppError> {
        let actor = req.any_actor()?;
        seam(async move {
            let now = self.accounts.clock.now();
            let mut tx = self.user_tx(actor.user_id).await?;
            let by = self.required_by(&mut tx, actor.user_id).await?;
            if !by.is_empty() {
                return Err(AppError::Conflict(format!(
                    "Two-factor sign-in is required by {}: it stays on.",
                    by.join(", ")
                ))
                .into());
            }
            if accept(&mut tx, actor.user_id, code, now).await?.is_none() {
                return Err(wrong_code().into());
            }
            sqlx::query(
                "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_enabled_at = NULL,
                        totp_last_step = NULL, updated_at = $2 WHERE id = $1",
            )
            .bind(actor.user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                .bind(actor.user_id)
                .execute(&mut *tx)
                .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.two_factor.disable", "user", actor.user_id),
            )
            .await?;
            self.accounts.commit(tx).await?;
            Ok(())
        })
        .await
    }

    async fn new_recovery_codes(
        &self,
        req: &RequestCtx,
        code: &str,
    ) -> Result<RecoveryCodes, AppError> {
        let actor = req.any_actor()?;
        seam(async move {
            let now = self.accounts.clock.now();
            let mut tx = self.user_tx(actor.user_id).await?;
            if accept(&mut tx, actor.user_id, code, now).await? != Some(Factor::Code) {
                return Err(wrong_code().into());
            }
            let codes = replace_recovery_codes(&mut tx, actor.user_id).await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("user.two_factor.recovery_codes", "user", actor.user_id),
            )
            .await?;
            tx.commit().await?;
            Ok(RecoveryCodes { codes })
        })
        .await
    }

    async fn policy(&self, req: &RequestCtx, tenant: Option<Uuid>) -> Result<bool, AppError> {
        let actor = req.actor()?;
        authz::check_two_factor_policy(actor, tenant)?;
        seam(async move {
            let mut tx = db::begin(&self.accounts.pool, Scope::fleet()).await?;
            let required = policy_of(&mut tx, tenant, false).await?;
            tx.commit().await?;
            Ok(required.ok_or_else(|| AppError::NotFound("Tenant".into()))?)
        })
        .await
    }

    async fn set_policy(
        &self,
        req: &RequestCtx,
        tenant: Option<Uuid>,
        required: bool,
    ) -> Result<bool, AppError> {
        let actor = req.actor()?;
        authz::check_two_factor_policy(actor, tenant)?;
        seam(async move {
            let mut tx = db::begin(&self.accounts.pool, Scope::fleet()).await?;
            let before = policy_of(&mut tx, tenant, true).await?;
            let Some(before) = before else {
                return Err(AppError::NotFound("Tenant".into()).into());
            };
            if before == required {
                return Ok(required);
            }
            // Whoever requires it has it: turning it on would otherwise shut its author out
            // of everything but the setup at their very next request.
            let own: bool =
                sqlx::query_scalar("SELECT totp_enabled_at IS NOT NULL FROM users WHERE id = $1")
                    .bind(actor.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            if required && !own {
                return Err(AppError::field(
                    "required",
                    "Set up two-factor sign-in for yourself first (on your account page).",
                )
                .into());
            }
            let event = match tenant {
                Some(t) => {
                    sqlx::query("UPDATE tenants SET require_two_factor = $2 WHERE id = $1")
                        .bind(t)
                        .bind(required)
                        .execute(&mut *tx)
                        .await?;
                    Event::new("tenant.two_factor.require", "tenant", t).tenant(t)
                }
                None => {
                    sqlx::query("UPDATE fleet_settings SET require_two_factor = $1")
                        .bind(required)
                        .execute(&mut *tx)
                        .await?;
                    Event::new("fleet.two_factor.require", "fleet", "settings")
                }
            };
            audit::record(
                &mut tx,
                &Origin::of(req),
                event
                    .before(json!({ "required": before }))
                    .after(json!({ "required": required })),
            )
            .await?;
            self.accounts.commit(tx).await?;
            Ok(required)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_their_step_and_one_step_either_side() {
        let secret = b"12345678901234567890";
        // RFC 6238's SHA-1 test vector: 59 s → 94287082 (8 digits); its last six digits.
        let at = OffsetDateTime::from_unix_timestamp(59).unwrap();
        assert_eq!(matching_step(secret, "287082", at), Some(1));
        let later = OffsetDateTime::from_unix_timestamp(59 + 30).unwrap();
        assert_eq!(matching_step(secret, "287082", later), Some(1));
        let much_later = OffsetDateTime::from_unix_timestamp(59 + 90).unwrap();
        assert_eq!(matching_step(secret, "287082", much_later), None);
        assert_eq!(matching_step(secret, "28708", at), None);
        assert_eq!(normalise(" AbCd-efgh "), "abcdefgh");
    }
}
