//! Guest initialisation by cloud-init's NoCloud data source: each VM gets a small ISO 9660
//! volume labelled `cidata` holding `meta-data` (instance id = the VM's UUID, host name = its
//! name) and `user-data` (the template's login user with the owner's SSH keys, plus the
//! template's admin-approved snippet). No secret goes into either: keys are public.
use crate::platform::error::Result;
use app::error::AppError;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use uuid::Uuid;

/// Top-level user-data keys the portal writes itself; a template snippet may not set them
/// (it could otherwise replace the owner's keys or open password logins).
const RESERVED: &[&str] = &[
    "users",
    "user",
    "hostname",
    "fqdn",
    "ssh_authorized_keys",
    "ssh_pwauth",
    "disable_root",
    "chpasswd",
    "password",
    "manage_etc_hosts",
];
/// The largest snippet accepted (cloud-init's own limit on NoCloud data is far above this).
pub const MAX_SNIPPET: usize = 16 * 1024;

/// A template's cloud-config snippet: empty, or a YAML mapping without reserved keys.
pub fn parse_snippet(raw: &str, field: &str) -> Result<Map<String, Value>, AppError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(Map::new());
    }
    if text.len() > MAX_SNIPPET {
        return Err(AppError::field(field, "At most 16 KiB of cloud-config."));
    }
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        // The parser's message names a line and column, never more of the text.
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        AppError::field(field, format!("This is not valid YAML{at}."))
    })?;
    let Value::Object(map) = value else {
        return Err(AppError::field(
            field,
            "Write cloud-config keys, such as `packages: [htop]` or `runcmd: [...]`.",
        ));
    };
    if let Some(k) = map.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(AppError::field(
            field,
            format!("`{k}` is set by the portal (login user, host name and the owner's keys): remove it."),
        ));
    }
    Ok(map)
}

/// What one VM's seed says.
pub struct Seed<'a> {
    pub uuid: Uuid,
    pub hostname: &'a str,
    pub login_user: &'a str,
    pub keys: &'a [String],
    /// The template's admin-approved cloud-config.
    pub snippet: &'a str,
    /// The requester's own cloud-config (templates that allow it; approvers saw it).
    pub extra: &'a str,
}

/// The requester's keys join the template's: lists are concatenated (the template's first),
/// and where both set one value the template's stands.
fn merge(base: &mut Map<String, Value>, extra: Map<String, Value>) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (Some(_), _) => {}
            (None, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Seed<'_> {
    pub fn meta_data(&self) -> String {
        // Both values are validated (a UUID, a VM name): nothing to quote.
        format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            self.uuid, self.hostname
        )
    }

    pub fn user_data(&self) -> Result<String> {
        let mut doc = parse_snippet(self.snippet, "user_data")?;
        merge(&mut doc, parse_snippet(self.extra, "user_data")?);
        let ours = json!({
            "hostname": self.hostname,
            "manage_etc_hosts": true,
            // Without a locale cloud-init's status ends in an error on minimal images.
            "locale": "C.UTF-8",
            "ssh_pwauth": false,
            "disable_root": true,
            "users": [{
                "name": self.login_user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": true,
                "ssh_authorized_keys": self.keys,
            }],
        });
        if let Value::Object(ours) = ours {
            doc.extend(ours);
        }
        let yaml = serde_yaml_ng::to_string(&Value::Object(doc))?;
        Ok(format!("#cloud-config\n{yaml}"))
    }

    /// The NoCloud ISO, built by genisoimage (Debian's `genisoimage` package) in a private
    /// temporary folder.
    pub async fn iso(&self) -> Result<Vec<u8>, String> {
        let dir = std::env::temp_dir().join(format!("concierge-seed-{}", Uuid::new_v4()));
        let result = self.iso_in(&dir).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn iso_in(&self, dir: &PathBuf) -> Result<Vec<u8>, String> {
        let user_data = self.user_data().map_err(|e| e.to_string())?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("seed folder: {e}"))?;
        tokio::fs::write(dir.join("meta-data"), self.meta_data())
            .await
            .map_err(|e| format!("seed meta-data: {e}"))?;
        tokio::fs::write(dir.join("user-data"), user_data)
            .await
            .map_err(|e| format!("seed user-data: {e}"))?;
        let out = dir.join("seed.iso");
        let status = tokio::process::Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(&out)
            .arg(dir.join("user-data"))
            .arg(dir.join("meta-data"))
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| {
                format!("genisoimage could not run ({e}): install Debian's genisoimage package on the portal's machine")
            })?;
        if !status.success() {
            return Err(format!("genisoimage failed ({status})"));
        }
        tokio::fs::read(&out)
            .await
            .map_err(|e| format!("reading the seed: {e}"))
    }
}

/// The seed volume of a VM, next to its disk.
pub fn seed_volume(uuid: Uuid) -> String {
    format!("cc-{uuid}-seed.iso")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed<'a>(keys: &'a [String], snippet: &'a str) -> Seed<'a> {
        Seed {
            uuid: Uuid::nil(),
            hostname: "web-1",
            login_user: "debian",
            keys,
            snippet,
            extra: "packages: [tmux]\ntimezone: Europe/Paris\npackages_x: 1",
        }
    }

    #[test]
    fn user_data_carries_the_login_user_keys_and_snippet() {
        let keys = vec!["ssh-ed25519 AAAA you@laptop".to_string()];
        let text = seed(&keys, "packages: [htop]\nruncmd:\n  - [touch, /ok]")
            .user_data()
            .unwrap();
        assert!(text.starts_with("#cloud-config\n"));
        let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["hostname"], "web-1");
        assert_eq!(doc["users"][0]["name"], "debian");
        assert_eq!(
            doc["users"][0]["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAA you@laptop"
        );
        assert_eq!(doc["packages"][0], "htop");
        assert_eq!(
            doc["packages"][1], "tmux",
            "the requester's list joins the template's"
        );
        assert_eq!(doc["timezone"], "Europe/Paris");
        assert_eq!(doc["ssh_pwauth"], false);
        assert_eq!(
            seed(&keys, "").meta_data(),
            "instance-id: 00000000-0000-0000-0000-000000000000\nlocal-hostname: web-1\n"
        );
    }

    #[test]
    fn snippets_are_yaml_mappings_without_reserved_keys() {
        for bad in [
            "users: []",
            "ssh_authorized_keys: [x]",
            "- a list",
            "just text",
            "key: [unclosed",
            &"a: b\n".repeat(4000),
        ] {
            let e = parse_snippet(bad, "user_data").unwrap_err();
            assert!(e.field_message("user_data").is_some(), "{bad:.30}");
        }
        assert!(parse_snippet("  ", "user_data").unwrap().is_empty());
        assert_eq!(
            parse_snippet("timezone: UTC", "user_data").unwrap().len(),
            1
        );
    }
}
