//! The backend's one error type. Database, hypervisor and domain errors all convert into it, so
//! `?` works everywhere below the seam; it becomes the wire's `AppError` once, at the seam
//! (constraint names become field errors there) and a job's `Outcome` once, in the job runner.
use crate::platform::jobs::Outcome;
use app::error::AppError;
use uuid::Uuid;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Already what the user should read: validation, not found, conflict, forbidden.
    #[error("{0}")]
    App(#[from] AppError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Hypervisor(#[from] virt::error::Error),
    /// What the host layer answered (`hypervisor::Hypervisors` reports in messages: "the host
    /// is unreachable", libvirt's own text).
    #[error("{0}")]
    Host(String),
    /// This replica no longer holds the host's lease (another replica took it over): what
    /// it was about to write for the host is stale and was not written.
    #[error("host {0}: this replica no longer holds its lease")]
    Fenced(Uuid),
    /// Anything else unexpected (a task that panicked, a file that could not be written).
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn other(e: impl std::fmt::Display) -> Self {
        Error::Other(e.to_string())
    }
}

/// Failures that are never the user's doing and carry nothing to act on but their message.
macro_rules! unexpected {
    ($($from:ty),* $(,)?) => {$(
        impl From<$from> for Error {
            fn from(e: $from) -> Self {
                Error::other(e)
            }
        }
    )*};
}

unexpected!(
    tokio::task::JoinError,
    tokio::sync::AcquireError,
    std::io::Error,
    serde_json::Error,
    serde_yaml_ng::Error,
    time::error::Format,
    argon2::password_hash::Error,
    tower_sessions::session::Error,
    Box<dyn std::error::Error + Send + Sync>,
);

impl From<Error> for AppError {
    /// A constraint the user's input broke names its field; a write row-level security refused
    /// is the caller's lack of access (403), not our failure; anything else is logged and the
    /// user gets a reference to quote.
    fn from(e: Error) -> Self {
        let db = match &e {
            Error::App(app) => return app.clone(),
            Error::Database(sqlx::Error::Database(db)) => Some(db),
            _ => None,
        };
        if let Some(db) = db {
            if let Some(mapped) = db.constraint().and_then(on_constraint) {
                return mapped;
            }
            if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) {
                tracing::warn!(error = %db, "refused by row-level security");
                return AppError::Forbidden;
            }
        }
        let reference = Uuid::new_v4().simple().to_string()[..8].to_string();
        tracing::error!(%reference, error = %e, "internal error");
        AppError::Internal(reference)
    }
}

impl From<Error> for Outcome {
    /// Inside a job every failure of the database or a host is worth another attempt; the
    /// handlers return `Outcome::Fail` or `Outcome::Wait` themselves where it is not.
    fn from(e: Error) -> Self {
        Outcome::Retry(e.to_string())
    }
}

impl From<sqlx::Error> for Outcome {
    fn from(e: sqlx::Error) -> Self {
        Error::from(e).into()
    }
}

impl From<virt::error::Error> for Outcome {
    fn from(e: virt::error::Error) -> Self {
        Error::from(e).into()
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Host(message)
    }
}

impl From<String> for Outcome {
    fn from(e: String) -> Self {
        Error::from(e).into()
    }
}

/// Runs the body of a seam method, written in the backend's error type so that `?` works on
/// every call, and answers with the wire's `AppError`.
pub async fn seam<T>(body: impl std::future::Future<Output = Result<T>>) -> Result<T, AppError> {
    body.await.map_err(AppError::from)
}

/// Logs `e` and hands the user a reference (or the field error its constraint names): for the
/// few places that hold an error outside a `?`.
pub fn internal(e: impl Into<Error>) -> AppError {
    AppError::from(e.into())
}

/// SQLSTATE of "new row violates row-level security policy" (and of missing grants).
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Every constraint whose violation is the user's input, with what to tell them: the one
/// mapping from constraint names to messages.
fn on_constraint(name: &str) -> Option<AppError> {
    let field = |field: &str, message: &str| Some(AppError::field(field, message));
    match name {
        "users_email_key" => field("email", "That e-mail address is already in use."),
        "users_email_length" => field("email", "Enter an e-mail address of 3 to 254 characters."),
        "users_display_name_length" => {
            field("display_name", "Enter a name of 1 to 100 characters.")
        }
        "tenants_name_key" => field("name", "A tenant with that name already exists."),
        "tenants_name_length" => field("name", "Enter a name of 1 to 100 characters."),
        "memberships_pkey" => field("email", "That person is already a member."),
        "images_name_key" => field("name", "An image with that name already exists."),
        "image_copies_volume_key" => {
            field("volume", "That volume is already an image of the library.")
        }
        "image_copies_pkey" => field("host", "The image already has a copy on that host."),
        "templates_name_key" => field("name", "A template with that name already exists."),
        "templates_image_fkey" => Some(AppError::Conflict(
            "Templates use this image: point them at another image first.".into(),
        )),
        "hosts_name_key" => field("name", "A host with that name is already registered."),
        "hosts_uri_key" => field("uri", "That URI is already registered."),
        "ssh_keys_fingerprint_key" => field("key", "That key is already on your account."),
        "rate_cards_template_id_fkey" => field("template_id", "Choose a template from the list."),
        "tenant_quotas_tenant_id_fkey" => Some(AppError::NotFound("Tenant".into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_pass_through_and_others_get_a_reference() {
        let field = AppError::field("name", "Enter a name.");
        assert_eq!(AppError::from(Error::from(field.clone())), field);
        let AppError::Internal(reference) = AppError::from(Error::other("disk full")) else {
            panic!("an unexpected error is internal");
        };
        assert_eq!(reference.len(), 8);
        assert!(matches!(
            Outcome::from(Error::other("host unreachable")),
            Outcome::Retry(m) if m == "host unreachable"
        ));
        assert!(on_constraint("hosts_uri_key").is_some());
        assert!(on_constraint("vms_pkey").is_none());
    }
}
