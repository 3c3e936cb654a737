//! The template form at the edge: every check that needs no database, once, into
//! `TemplateFields` (the image and the named tenants are looked up by `save`). The parsers
//! for sizes, lease days, texts and login users serve the image and request forms too.
use crate::hypervisor::storage;
use app::error::{AllValid, AppError};
use app::provisioning::{Size, TemplateForm};

/// Which tenants a template is offered to, as the form names them.
#[derive(Debug, PartialEq)]
pub(super) enum Offered {
    All,
    /// Lower-case tenant names, each at least once.
    Named(Vec<String>),
}

/// A template form that passed every check that needs no database.
#[derive(Debug)]
pub(super) struct TemplateFields {
    pub name: String,
    pub description: String,
    pub os: String,
    pub sizes: Vec<Size>,
    pub default_lease: i32,
    pub max_lease: i32,
    pub offered: Offered,
    /// The template's own login user; the image's applies when it names none.
    pub login_user: Option<String>,
    /// A cloud-config snippet (checked to be a mapping without reserved keys).
    pub user_data: String,
    pub allow_user_data: bool,
    pub networks: Vec<String>,
}

impl TryFrom<&TemplateForm> for TemplateFields {
    type Error = AppError;

    /// Every field is checked and every error named at once.
    fn try_from(form: &TemplateForm) -> Result<Self, AppError> {
        let name = parse_text(&form.name, "name", 80, true);
        let description = parse_text(&form.description, "description", 2000, false);
        let os = parse_text(&form.os, "os", 80, true);
        let sizes = parse_sizes(&form.sizes);
        let default_lease = parse_days(&form.default_lease_days, "default_lease_days");
        let max_lease = parse_days(&form.max_lease_days, "max_lease_days");
        let lease_order = match (&default_lease, &max_lease) {
            (Ok(d), Ok(m)) if d > m => Err(AppError::field(
                "max_lease_days",
                "The maximum lease must be at least the default lease.",
            )),
            _ => Ok(()),
        };
        let login_user = parse_login_user(&form.login_user, "login_user");
        let snippet = crate::catalog::cloud_init::parse_snippet(&form.user_data, "user_data");
        let networks = parse_networks(&form.networks);
        let (name, description, os, sizes, default_lease, max_lease, (), login_user, _, networks) =
            (
                name,
                description,
                os,
                sizes,
                default_lease,
                max_lease,
                lease_order,
                login_user,
                snippet,
                networks,
            )
                .all_valid()?;
        Ok(TemplateFields {
            name,
            description,
            os,
            sizes,
            default_lease,
            max_lease,
            offered: parse_offered(&form.tenants),
            login_user,
            user_data: form.user_data.trim().to_string(),
            allow_user_data: matches!(form.allow_user_data.trim(), "on" | "true"),
            networks,
        })
    }
}

/// `*` for every tenant, else comma-separated names (compared without case).
fn parse_offered(raw: &str) -> Offered {
    let raw = raw.trim();
    if raw == "*" {
        return Offered::All;
    }
    let mut names: Vec<String> = Vec::new();
    for name in raw.split(',').map(|n| n.trim().to_lowercase()) {
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    Offered::Named(names)
}

pub const MAX_VCPUS: i32 = 128;
const MAX_DISK_GIB: i64 = 16 * 1024;

/// Sizes as typed in the template form: one per line, `name vcpus memory_gib disk_gib`.
fn parse_sizes(raw: &str) -> Result<Vec<Size>, AppError> {
    let bad = |line: usize, why: &str| {
        AppError::field(
            "sizes",
            format!("Line {line}: {why} Write one size per line as `name vCPUs memory-GiB disk-GiB`, e.g. `small 1 2 20`."),
        )
    };
    let mut sizes: Vec<Size> = Vec::new();
    for (i, line) in raw.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|p| !p.is_empty())
            .collect();
        let [name, vcpus, memory, disk] = parts[..] else {
            return Err(bad(i + 1, "expected four values."));
        };
        let name = name.to_lowercase();
        if name.len() > 20
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                i + 1,
                "a size name has up to 20 letters, digits, '-' or '_'.",
            ));
        }
        let vcpus: i32 = vcpus
            .parse()
            .ok()
            .filter(|v| (1..=MAX_VCPUS).contains(v))
            .ok_or_else(|| bad(i + 1, "vCPUs must be a whole number from 1 to 128."))?;
        let memory_mib = memory
            .parse::<f64>()
            .ok()
            .filter(|m| m.is_finite() && *m >= 0.25 && *m <= 1024.0)
            .map(|m| (m * 1024.0).round() as i64)
            .ok_or_else(|| bad(i + 1, "memory must be from 0.25 to 1024 GiB."))?;
        let disk_gib: i64 = disk
            .parse()
            .ok()
            .filter(|d| (1..=MAX_DISK_GIB).contains(d))
            .ok_or_else(|| bad(i + 1, "disk must be a whole number of GiB from 1 to 16384."))?;
        if sizes.iter().any(|s| s.name == name) {
            return Err(bad(i + 1, "each size needs its own name."));
        }
        sizes.push(Size {
            name,
            vcpus,
            memory_mib,
            disk_gib,
        });
    }
    if sizes.is_empty() {
        return Err(AppError::field(
            "sizes",
            "Add at least one size, e.g. `small 1 2 20`.",
        ));
    }
    if sizes.len() > 20 {
        return Err(AppError::field("sizes", "At most 20 sizes."));
    }
    Ok(sizes)
}

pub fn parse_days(raw: &str, field: &str) -> Result<i32, AppError> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|d| (1..=3650).contains(d))
        .ok_or_else(|| AppError::field(field, "Enter a whole number of days from 1 to 3650."))
}

pub fn parse_text(raw: &str, field: &str, max: usize, required: bool) -> Result<String, AppError> {
    let s = raw.trim();
    if required && s.is_empty() {
        return Err(AppError::field(field, "This field is required."));
    }
    if s.chars().count() > max || s.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        return Err(AppError::field(
            field,
            format!("Use at most {max} characters, without control characters."),
        ));
    }
    Ok(s.to_string())
}

/// The login user cloud-init creates: a plain Linux user name, not root. Empty: no cloud-init.
pub fn parse_login_user(raw: &str, field: &str) -> Result<Option<String>, AppError> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let ok = s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok || s == "root" {
        return Err(AppError::field(
            field,
            "Use a Linux user name (lowercase letters, digits, '_' or '-', at most 32), not root, e.g. debian.",
        ));
    }
    Ok(Some(s.to_string()))
}

/// The networks a template's VMs may join: libvirt network names, or `user` for user-mode
/// networking; at most 8, each once. Empty stands for `user`.
fn parse_networks(raw: &str) -> Result<Vec<String>, AppError> {
    let mut out: Vec<String> = Vec::new();
    for part in raw
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let name = storage::parse_name(part, "networks").map_err(|_| {
            AppError::field(
                "networks",
                format!("\u{201c}{part}\u{201d} is not a network name: use letters, digits, '.', '_' or '-', or user for user-mode networking."),
            )
        })?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.len() > 8 {
        return Err(AppError::field("networks", "At most 8 networks."));
    }
    if out == ["user"] {
        out.clear();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_name_the_line() {
        let s = parse_sizes("small 1 2 20\nlarge, 4, 0.5, 100\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].memory_mib, 512);
        let e = parse_sizes("small 1 2 20\nhuge 999 2 20").unwrap_err();
        assert!(e.field_message("sizes").unwrap().starts_with("Line 2"));
        assert!(parse_sizes("").is_err());
        assert!(parse_sizes("a 1 2 20\na 2 2 20").is_err());
        assert!(parse_sizes("<x> 1 2 20").is_err());
        assert!(parse_sizes("x -1 2 20").is_err());
    }

    fn form() -> TemplateForm {
        TemplateForm {
            name: " Debian 12 ".into(),
            os: "Debian".into(),
            sizes: "small 1 2 20".into(),
            default_lease_days: "30".into(),
            max_lease_days: "90".into(),
            tenants: "Acme, beta ,acme".into(),
            ..TemplateForm::default()
        }
    }

    #[test]
    fn a_template_form_becomes_fields_or_names_every_bad_field() {
        let f = TemplateFields::try_from(&form()).unwrap();
        assert_eq!(f.name, "Debian 12");
        assert_eq!(
            f.offered,
            Offered::Named(vec!["acme".into(), "beta".into()])
        );
        assert!(f.networks.is_empty() && f.login_user.is_none() && !f.allow_user_data);
        let all = TemplateForm {
            tenants: " * ".into(),
            ..form()
        };
        assert_eq!(
            TemplateFields::try_from(&all).unwrap().offered,
            Offered::All
        );
        let bad = TemplateForm {
            name: String::new(),
            max_lease_days: "7".into(),
            login_user: "root".into(),
            networks: "a b c d e f g h i".into(),
            ..form()
        };
        let e = TemplateFields::try_from(&bad).unwrap_err();
        for field in ["name", "max_lease_days", "login_user", "networks"] {
            assert!(e.field_message(field).is_some(), "{field}: {e:?}");
        }
    }
}
