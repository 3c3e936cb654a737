//! A request form checked field by field into `Valid`: every refusal names its field.
use super::requests::*;
use crate::catalog::{self, parse_days};
use crate::platform::db::Tx;
use crate::platform::error::Result;
use app::account::Actor;
use app::error::{AllValid, AppError};
use app::provisioning::RequestForm;
use uuid::Uuid;

/// A VM name: lowercase letters, digits and hyphens, at most 63, starting with a letter and
/// not ending with a hyphen (safe in file names, host names and libvirt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmName(String);

impl VmName {
    pub fn parse(raw: &str, field: &str) -> Result<Self, AppError> {
        let s = raw.trim();
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(VmName(s.to_string()))
        } else {
            Err(AppError::field(
                field,
                "Use 1 to 63 lowercase letters, digits and hyphens, starting with a letter.",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated request form.
pub(super) struct Valid {
    pub(super) tenant: Uuid,
    pub(super) template: app::provisioning::Template,
    pub(super) size: app::provisioning::Size,
    pub(super) count: i32,
    pub(super) prefix: String,
    pub(super) lease_days: i32,
    pub(super) purpose: String,
    pub(super) user_data: String,
    /// The libvirt network chosen; None: user-mode networking.
    pub(super) network: Option<String>,
}

/// The network among the template's choices (empty: the first); None for user-mode.
pub(super) fn parse_network(
    template: &app::provisioning::Template,
    raw: &str,
) -> Result<Option<String>, AppError> {
    let choices = crate::catalog::network_choices(template);
    let chosen = match raw.trim() {
        "" => choices[0].as_str(),
        n => n,
    };
    if !choices.iter().any(|c| c == chosen) {
        return Err(AppError::field(
            "network",
            format!(
                "Choose one of the networks {} offers: {}.",
                template.name,
                choices.join(", ")
            ),
        ));
    }
    Ok((chosen != crate::catalog::USER_NETWORK).then(|| chosen.to_string()))
}

/// The requester's own cloud-config: only where the template allows it, a YAML mapping of
/// at most 16 KiB that does not touch what the portal sets (users, keys, host name).
pub(super) fn parse_user_data(
    template: &app::provisioning::Template,
    raw: &str,
) -> Result<String, AppError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(String::new());
    }
    if !template.allow_user_data {
        return Err(AppError::field(
            "user_data",
            format!("{} does not take your own cloud-config.", template.name),
        ));
    }
    crate::catalog::cloud_init::parse_snippet(text, "user_data")?;
    Ok(text.to_string())
}

/// The names a request's VMs get: the prefix alone for one VM, else prefix-1, prefix-2, …
pub fn vm_names(prefix: &str, count: i32) -> Vec<String> {
    if count == 1 {
        vec![prefix.to_string()]
    } else {
        (1..=count).map(|i| format!("{prefix}-{i}")).collect()
    }
}

pub(super) fn parse_count(raw: &str) -> Result<i32, AppError> {
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|c| (1..=MAX_COUNT).contains(c))
        .ok_or_else(|| AppError::field("count", format!("Ask for 1 to {MAX_COUNT} VMs at a time.")))
}

pub(super) fn parse_purpose(raw: &str) -> Result<String, AppError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(AppError::field(
            "purpose",
            "Say what the VMs are for (approvers read it).",
        ));
    }
    if s.chars().count() > 1000 || s.chars().any(|c| c.is_control() && c != '\n' && c != '\r') {
        return Err(AppError::field(
            "purpose",
            "Use at most 1000 characters, without control characters.",
        ));
    }
    Ok(s.to_string())
}

/// A size in GiB (fractions allowed) as MiB, within `min_gib..=max_gib`.
pub(crate) fn parse_gib_as_mib(
    raw: &str,
    field: &str,
    min_gib: f64,
    max_gib: f64,
) -> Result<i64, AppError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= min_gib && *v <= max_gib)
        .map(|v| (v * 1024.0).round() as i64)
        .ok_or_else(|| {
            AppError::field(
                field,
                format!("Enter a number of GiB from {min_gib} to {max_gib}."),
            )
        })
}

impl ProvisioningBackend {
    pub(super) async fn validate(
        &self,
        tx: &mut Tx,
        actor: &Actor,
        form: &RequestForm,
        full: bool,
    ) -> Result<Valid> {
        let tenant = form
            .tenant_id
            .ok_or_else(|| AppError::field("tenant_id", "Choose a tenant."))?;
        if !actor.may_request(tenant) {
            return Err(
                AppError::field("tenant_id", "You cannot request VMs in that tenant.").into(),
            );
        }
        let template_id = form
            .template_id
            .ok_or_else(|| AppError::field("template_id", "Choose a template."))?;
        let template = catalog::usable_template(tx, tenant, template_id).await?;
        let size = template
            .sizes
            .iter()
            .find(|s| s.name == form.size.trim())
            .cloned()
            .ok_or_else(|| AppError::field("size", "Choose one of the template's sizes."));
        let count = parse_count(&form.count);
        if !full {
            let (size, count) = (size, count).all_valid()?;
            return Ok(Valid {
                tenant,
                template,
                size,
                count,
                prefix: String::new(),
                lease_days: 0,
                purpose: String::new(),
                user_data: String::new(),
                network: None,
            });
        }
        let prefix = VmName::parse(&form.name_prefix, "name_prefix").and_then(|p| {
            if p.as_str().len() > 50 {
                Err(AppError::field(
                    "name_prefix",
                    "Use at most 50 characters (VM numbers are appended).",
                ))
            } else {
                Ok(p.as_str().to_string())
            }
        });
        let lease_days = if form.lease_days.trim().is_empty() {
            Ok(template.default_lease_days)
        } else {
            parse_days(&form.lease_days, "lease_days").and_then(|d| {
                if d > template.max_lease_days {
                    Err(AppError::field(
                        "lease_days",
                        format!(
                            "The longest lease for {} is {} days.",
                            template.name, template.max_lease_days
                        ),
                    ))
                } else {
                    Ok(d)
                }
            })
        };
        let purpose = parse_purpose(&form.purpose);
        let user_data = parse_user_data(&template, &form.user_data);
        let network = parse_network(&template, &form.network);
        let (size, count, prefix, lease_days, purpose, user_data, network) =
            (size, count, prefix, lease_days, purpose, user_data, network).all_valid()?;
        let names = vm_names(&prefix, count);
        let taken: Option<String> = sqlx::query_scalar(
                "SELECT name FROM vms WHERE tenant_id = $1 AND deleted_at IS NULL AND name = ANY($2) LIMIT 1",
            )
            .bind(tenant)
            .bind(&names)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(t) = taken {
            return Err(AppError::field(
                "name_prefix",
                format!("A VM named {t} already exists in this tenant; choose another prefix."),
            )
            .into());
        }
        Ok(Valid {
            tenant,
            template,
            size,
            count,
            prefix,
            lease_days,
            purpose,
            user_data,
            network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_validated() {
        assert_eq!(
            VmName::parse(" web-01 ", "name").unwrap().as_str(),
            "web-01"
        );
        for bad in [
            "",
            "Web",
            "1web",
            "web-",
            "web_1",
            "web 1",
            "<web>",
            "web;rm",
            &"a".repeat(64),
        ] {
            assert!(VmName::parse(bad, "name").is_err(), "{bad:?}");
        }
    }
}
