//! A validated, normalised e-mail address.
use app::error::AppError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, lowercases and checks the shape `local@domain.tld` (no spaces, no control
    /// characters, at most 254 characters). `field` names the form field for the error.
    pub fn parse(raw: &str, field: &str) -> Result<Self, AppError> {
        let s = raw.trim().to_lowercase();
        let invalid = || AppError::field(field, "Enter an e-mail address like name@example.com.");
        if s.is_empty() {
            return Err(AppError::field(field, "Enter an e-mail address."));
        }
        if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = s.split_once('@').ok_or_else(invalid)?;
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || s.contains(['<', '>', '"', '\'', '(', ')', ',', ';', ':', '\\', '[', ']'])
        {
            return Err(invalid());
        }
        Ok(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's name as shown in the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str, field: &str) -> Result<Self, AppError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(AppError::field(field, "Enter a name."));
        }
        if s.chars().count() > 100 {
            return Err(AppError::field(field, "Use at most 100 characters."));
        }
        if s.chars().any(char::is_control) {
            return Err(AppError::field(
                field,
                "Remove control characters from the name.",
            ));
        }
        Ok(DisplayName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ", "email")
                .unwrap()
                .as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "a b@example.com",
            "a@b",
            "a@b@c.d",
            "<a>@x.io",
            "a@.x",
        ] {
            let err = Email::parse(bad, "email").unwrap_err();
            assert!(
                err.field_message("email").is_some(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse(" Ada Lovelace ", "n").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert!(DisplayName::parse("   ", "n").is_err());
        assert!(DisplayName::parse(&"x".repeat(101), "n").is_err());
        assert!(DisplayName::parse("a\u{7}b", "n").is_err());
    }
}
