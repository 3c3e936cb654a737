//! Password policy and hashing (Argon2id m=19456 t=2 p=1, off the async executor, with a
//! cap on concurrent hashes so a login flood cannot exhaust memory and cores).
use crate::platform::error::{Error, Result};
use app::error::AppError;
use argon2::password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

static COMMON: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("static Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks a new password against the policy: length only, plus a list of common passwords
/// and the account's own e-mail. `field` names the form field for the error.
pub fn check_policy(password: &str, email: &str, field: &str) -> Result<(), AppError> {
    let len = password.chars().count();
    if len < MIN_LEN {
        return Err(AppError::field(
            field,
            format!("Use at least {MIN_LEN} characters."),
        ));
    }
    if len > MAX_LEN {
        return Err(AppError::field(
            field,
            format!("Use at most {MAX_LEN} characters."),
        ));
    }
    let lower = password.to_lowercase();
    if COMMON.contains(lower.as_str()) {
        return Err(AppError::field(
            field,
            "That password is one of the most common ones; choose another.",
        ));
    }
    let local = email.split('@').next().unwrap_or_default();
    if lower == email.to_lowercase() || (local.len() >= 4 && lower == local.to_lowercase()) {
        return Err(AppError::field(
            field,
            "Do not use your e-mail address as your password.",
        ));
    }
    Ok(())
}

/// A random one-time password: 20 characters from an alphabet without look-alikes.
pub fn one_time() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    let raw: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!(
        "{}-{}-{}-{}",
        &raw[0..5],
        &raw[5..10],
        &raw[10..15],
        &raw[15..20]
    )
}

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so unknown and known e-mails take
    /// the same time.
    dummy: Arc<String>,
}

impl Hasher {
    pub fn new(concurrency: usize) -> Self {
        let dummy = argon2()
            .hash_password(b"concierge-dummy-password")
            .expect("hashing a constant succeeds")
            .to_string();
        Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(dummy),
        }
    }

    pub async fn hash(&self, password: &str) -> Result<String> {
        let _permit = self.permits.acquire().await?;
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(Error::from)
        })
        .await?
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is none.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool> {
        let _permit = self.permits.acquire().await?;
        let known = hash.is_some();
        let hash = hash
            .map(str::to_owned)
            .unwrap_or_else(|| self.dummy.to_string());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_long_common_and_own_email() {
        assert!(check_policy("short", "a@b.c", "p").is_err());
        assert!(check_policy(&"x".repeat(129), "a@b.c", "p").is_err());
        assert!(
            check_policy("Password1", "a@b.c", "p").is_ok()
                || check_policy("password1", "a@b.c", "p").is_err()
        );
        assert_eq!(
            check_policy("qwertyuiop", "a@b.c", "new_password")
                .unwrap_err()
                .field_message("new_password"),
            Some("That password is one of the most common ones; choose another.".into())
        );
        assert!(check_policy("alice@example.com", "alice@example.com", "p").is_err());
        assert!(check_policy("correct horse battery staple", "a@b.c", "p").is_ok());
        assert!(check_policy(&"é".repeat(64), "a@b.c", "p").is_ok());
    }

    #[test]
    fn ships_at_least_3000_common_passwords() {
        assert!(COMMON.len() >= 3000);
        assert!(COMMON.contains("123456"));
    }

    #[test]
    fn one_time_passwords_pass_the_policy_and_differ() {
        let a = one_time();
        let b = one_time();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        check_policy(&a, "a@b.c", "p").unwrap();
    }

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_fail() {
        let h = Hasher::new(2);
        let hash = h.hash("correct horse battery").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h
            .verify("correct horse battery", Some(&hash))
            .await
            .unwrap());
        assert!(!h.verify("wrong horse battery", Some(&hash)).await.unwrap());
        assert!(!h.verify("concierge-dummy-password", None).await.unwrap());
    }
}
