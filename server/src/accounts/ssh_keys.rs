//! A user's SSH public keys: the backend of the `SshKeys` seam. Keys are parsed with the
//! `ssh-key` crate, re-encoded (so what reaches a guest is exactly what was checked) and
//! fingerprinted as `ssh-keygen -l` does.
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::account::SshKey;
use app::error::AppError;
use app::seam::{RequestCtx, SshKeys};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};
use uuid::Uuid;

pub struct SshKeysBackend {
    pub pool: PgPool,
}

/// How many keys one account may keep (each VM's user-data carries them all).
pub const MAX_KEYS: i64 = 20;
/// The longest line accepted: an RSA key of 16384 bits is about 2.8 KB.
const MAX_LINE: usize = 8192;
const MAX_COMMENT: usize = 100;

/// A checked public key: what is stored and what cloud-init writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    pub algorithm: String,
    /// `algorithm base64`, re-encoded from the parsed key.
    pub public_key: String,
    pub comment: String,
    pub fingerprint: String,
}

impl AuthorizedKey {
    pub fn parse(raw: &str, field: &str) -> Result<Self, AppError> {
        let bad = |why: &str| AppError::field(field, why.to_string());
        let line = raw.trim();
        if line.is_empty() {
            return Err(bad(
                "Paste a public key, such as the contents of ~/.ssh/id_ed25519.pub.",
            ));
        }
        if line.len() > MAX_LINE {
            return Err(bad(
                "That is too long for an SSH public key (at most 8 KiB).",
            ));
        }
        if line.contains("PRIVATE KEY") {
            return Err(bad(
                "That is a private key: never share it. Paste the public key (the .pub file) instead.",
            ));
        }
        if line.contains(['\n', '\r']) {
            return Err(bad("Paste one key, on one line."));
        }
        let key = PublicKey::from_openssh(line).map_err(|_| {
            bad("This is not an OpenSSH public key: expected a type, the key in base64 and an optional comment, e.g. `ssh-ed25519 AAAAC3Nza… you@laptop`.")
        })?;
        match key.key_data() {
            KeyData::Ed25519(_)
            | KeyData::Ecdsa(_)
            | KeyData::SkEd25519(_)
            | KeyData::SkEcdsaSha2NistP256(_) => {}
            KeyData::Rsa(rsa) => {
                let bits = rsa.n.as_positive_bytes().map_or(0, |b| b.len() * 8);
                if !(2048..=16384).contains(&bits) {
                    return Err(bad("RSA keys must have 2048 to 16384 bits."));
                }
            }
            KeyData::Dsa(_) => {
                return Err(bad(
                    "DSA keys are no longer accepted by OpenSSH: use an Ed25519 key (ssh-keygen -t ed25519).",
                ))
            }
            _ => return Err(bad("Use an Ed25519, ECDSA or RSA key.")),
        }
        let comment = key.comment().trim().to_string();
        if comment.chars().count() > MAX_COMMENT || comment.chars().any(char::is_control) {
            return Err(bad(
                "The key's comment (after the key) has at most 100 characters and no control characters.",
            ));
        }
        let bare = PublicKey::new(key.key_data().clone(), "");
        let public_key = bare
            .to_openssh()
            .map_err(|_| bad("This key could not be encoded again."))?
            .trim()
            .to_string();
        Ok(AuthorizedKey {
            algorithm: key.algorithm().as_str().to_string(),
            public_key,
            comment,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        })
    }

    /// The line written into `authorized_keys`.
    pub fn line(&self) -> String {
        if self.comment.is_empty() {
            self.public_key.clone()
        } else {
            format!("{} {}", self.public_key, self.comment)
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    algorithm: String,
    comment: String,
    fingerprint: String,
    created_at: time::OffsetDateTime,
}

impl From<Row> for SshKey {
    fn from(r: Row) -> Self {
        SshKey {
            id: r.id,
            algorithm: r.algorithm,
            comment: r.comment,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
        }
    }
}

fn own(user: Uuid) -> Scope {
    Scope {
        user: Some(user),
        ..Scope::default()
    }
}

/// The authorized_keys lines of one user (for a VM's user-data), oldest first.
pub async fn lines_of(tx: &mut db::Tx, user: Uuid) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT public_key, comment FROM ssh_keys WHERE user_id = $1 ORDER BY created_at, id",
    )
    .bind(user)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(k, c)| if c.is_empty() { k } else { format!("{k} {c}") })
        .collect())
}

#[async_trait]
impl SshKeys for SshKeysBackend {
    async fn list(&self, req: &RequestCtx) -> Result<Vec<SshKey>, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, algorithm, comment, fingerprint, created_at FROM ssh_keys
             WHERE user_id = $1 ORDER BY created_at, id",
            )
            .bind(actor.user_id)
            .fetch_all(&mut *tx)
            .await?;
            db::done(tx);
            Ok(rows.into_iter().map(SshKey::from).collect())
        })
        .await
    }

    async fn add(&self, req: &RequestCtx, key: &str) -> Result<SshKey, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let key = AuthorizedKey::parse(key, "key")?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            // Serialises two adds of one user, so the limit holds.
            sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
                .bind(actor.user_id)
                .execute(&mut *tx)
                .await?;
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ssh_keys WHERE user_id = $1")
                .bind(actor.user_id)
                .fetch_one(&mut *tx)
                .await?;
            if count >= MAX_KEYS {
                return Err(AppError::field(
                    "key",
                    format!("An account keeps at most {MAX_KEYS} keys: remove one first."),
                )
                .into());
            }
            let row: Row = sqlx::query_as(
                "INSERT INTO ssh_keys (user_id, algorithm, public_key, comment, fingerprint)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, algorithm, comment, fingerprint, created_at",
            )
            .bind(actor.user_id)
            .bind(&key.algorithm)
            .bind(&key.public_key)
            .bind(&key.comment)
            .bind(&key.fingerprint)
            .fetch_one(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("ssh_key.add", "ssh_key", row.id).after(json!({
                    "user": actor.user_id,
                    "algorithm": key.algorithm,
                    "fingerprint": key.fingerprint,
                    "comment": key.comment,
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(row.into())
        })
        .await
    }

    async fn remove(&self, req: &RequestCtx, id: Uuid) -> Result<(), AppError> {
        seam(async move {
            let actor = req.actor()?;
            let mut tx = db::begin(&self.pool, own(actor.user_id)).await?;
            let gone: Option<(String, String)> = sqlx::query_as(
            "DELETE FROM ssh_keys WHERE id = $1 AND user_id = $2 RETURNING fingerprint, algorithm",
        )
        .bind(id)
        .bind(actor.user_id)
        .fetch_optional(&mut *tx)
        .await?;
            let (fingerprint, algorithm) =
                gone.ok_or_else(|| AppError::NotFound("SSH key".into()))?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("ssh_key.remove", "ssh_key", id).before(json!({
                    "user": actor.user_id,
                    "algorithm": algorithm,
                    "fingerprint": fingerprint,
                })),
            )
            .await?;
            Ok(tx.commit().await?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";

    #[test]
    fn a_public_key_is_parsed_reencoded_and_fingerprinted() {
        let k = AuthorizedKey::parse(&format!("  {ED25519}  "), "key").unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "foo@bar.com");
        assert!(k.fingerprint.starts_with("SHA256:"), "{}", k.fingerprint);
        assert_eq!(k.line(), ED25519);
    }

    #[test]
    fn bad_keys_name_the_field() {
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 not-base64!",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqt",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            &format!("{ED25519}\n{ED25519}"),
            &format!("ssh-ed25519 {}", "A".repeat(9000)),
            &format!("{ED25519}{}", "x".repeat(200)),
        ] {
            let e = AuthorizedKey::parse(bad, "key").unwrap_err();
            assert!(e.field_message("key").is_some(), "{bad:.40}: {e:?}");
        }
    }
}
