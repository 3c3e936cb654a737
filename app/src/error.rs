//! The one error type every server function returns. It crosses the wire as JSON, so the
//! browser can put each field's message next to that field.
use leptos::server_fn::{codec::JsonEncoding, error::FromServerFnError, ServerFnError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    #[error("Please sign in.")]
    Unauthenticated,
    #[error("Change your password before continuing.")]
    PasswordChangeRequired,
    #[error("Set up two-factor sign-in before continuing.")]
    TwoFactorRequired,
    #[error("You are not allowed to do that.")]
    Forbidden,
    #[error("{0} not found.")]
    NotFound(String),
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Conflict(String),
    /// Deliberately silent about which of e-mail and password was wrong.
    #[error("E-mail or password is incorrect.")]
    LoginFailed,
    /// Like `LoginFailed`, and says why the answer took longer.
    #[error("E-mail or password is incorrect. This account has had many failed sign-ins, so each attempt is answered more slowly for a while.")]
    LoginSlowed,
    /// Refused for now; the message says why and for how long.
    #[error("{0}")]
    TooManyRequests(String),
    #[error("Something went wrong on our side (reference {0}).")]
    Internal(String),
    #[error("Could not reach the server: {0}")]
    Transport(String),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl AppError {
    /// A validation error on one form field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        AppError::Invalid(vec![FieldError {
            field: field.to_string(),
            message: message.into(),
        }])
    }

    /// Combines the errors of several validations into one, so a form shows every bad field
    /// at once (a non-field error wins).
    pub fn merge(errors: impl IntoIterator<Item = Option<AppError>>) -> AppError {
        let mut fields = Vec::new();
        for e in errors.into_iter().flatten() {
            match e {
                AppError::Invalid(mut f) => fields.append(&mut f),
                other => return other,
            }
        }
        AppError::Invalid(fields)
    }

    /// The message for `field`, if this error concerns it.
    pub fn field_message(&self, field: &str) -> Option<String> {
        match self {
            AppError::Invalid(errors) => errors
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.message.clone()),
            _ => None,
        }
    }

    /// The message shown above a form: everything that is not tied to a field.
    pub fn form_message(&self) -> Option<String> {
        match self {
            AppError::Invalid(_) => None,
            other => Some(other.to_string()),
        }
    }
}

impl AppError {
    /// The HTTP status of this error as a server-function response (numeric, so the browser
    /// build needs no `http` crate).
    pub fn status_code(&self) -> u16 {
        match self {
            AppError::Unauthenticated | AppError::LoginFailed | AppError::LoginSlowed => 401,
            AppError::PasswordChangeRequired
            | AppError::TwoFactorRequired
            | AppError::Forbidden => 403,
            AppError::NotFound(_) => 404,
            AppError::Conflict(_) => 409,
            AppError::Invalid(_) => 422,
            AppError::TooManyRequests(_) => 429,
            AppError::Transport(_) => 400,
            AppError::Internal(_) => 500,
        }
    }

    #[cfg(feature = "ssr")]
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::from_u16(self.status_code())
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: leptos::server_fn::error::ServerFnErrorErr) -> Self {
        AppError::Transport(value.to_string())
    }

    /// Every server function's error passes here in the browser: a session that ended (idle or
    /// absolute timeout, signed out elsewhere) sends the page to the sign-in form, which
    /// returns here afterwards, instead of leaving "Please sign in." where the data was.
    fn de(data: leptos::server_fn::Bytes) -> Self {
        let error = serde_json::from_slice(&data)
            .unwrap_or_else(|e| AppError::Transport(format!("unreadable answer: {e}")));
        #[cfg(feature = "hydrate")]
        if error == AppError::Unauthenticated {
            session_ended();
        }
        error
    }
}

#[cfg(feature = "hydrate")]
fn session_ended() {
    let location = leptos::prelude::window().location();
    let path = location.pathname().unwrap_or_default();
    if path.starts_with("/login") || path.starts_with("/join") {
        return;
    }
    let here = format!("{path}{}", location.search().unwrap_or_default());
    let next = crate::url::urlencode(&here);
    let _ = location.assign(&format!("/login?expired=1&next={next}"));
}

impl From<ServerFnError> for AppError {
    fn from(value: ServerFnError) -> Self {
        AppError::Transport(value.to_string())
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// The fields of a form, each parsed on its own: all their values, or one error naming every
/// bad field (`(a, b, c).all_valid()?`), so a form is never answered one mistake at a time.
pub trait AllValid {
    type Values;
    fn all_valid(self) -> Result<Self::Values, AppError>;
}

macro_rules! all_valid_for_tuples {
    ($(($($t:ident $v:ident),+))+) => {$(
        impl<$($t),+> AllValid for ($(Result<$t, AppError>,)+) {
            type Values = ($($t,)+);
            fn all_valid(self) -> Result<Self::Values, AppError> {
                match self {
                    ($(Ok($v),)+) => Ok(($($v,)+)),
                    ($($v,)+) => Err(AppError::merge([$($v.err()),+])),
                }
            }
        }
    )+};
}

all_valid_for_tuples! {
    (A a, B b)
    (A a, B b, C c)
    (A a, B b, C c, D d)
    (A a, B b, C c, D d, E e)
    (A a, B b, C c, D d, E e, F f)
    (A a, B b, C c, D d, E e, F f, G g)
    (A a, B b, C c, D d, E e, F f, G g, H h)
    (A a, B b, C c, D d, E e, F f, G g, H h, I i)
    (A a, B b, C c, D d, E e, F f, G g, H h, I i, J j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_valid_gives_every_value_or_names_every_bad_field() {
        let ok: (Result<i32, AppError>, Result<&str, AppError>) = (Ok(1), Ok("a"));
        assert_eq!(ok.all_valid(), Ok((1, "a")));
        let bad: (
            Result<i32, AppError>,
            Result<(), AppError>,
            Result<u8, AppError>,
        ) = (
            Err(AppError::field("a", "bad a")),
            Ok(()),
            Err(AppError::field("c", "bad c")),
        );
        let e = bad.all_valid().unwrap_err();
        assert_eq!(e.field_message("a").as_deref(), Some("bad a"));
        assert_eq!(e.field_message("c").as_deref(), Some("bad c"));
        // A non-field error wins over field errors.
        let mixed: (Result<(), AppError>, Result<(), AppError>) =
            (Err(AppError::field("a", "bad a")), Err(AppError::Forbidden));
        assert_eq!(mixed.all_valid(), Err(AppError::Forbidden));
    }
}
