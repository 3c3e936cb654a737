//! Hosts reached over SSH (`qemu+ssh://user@host[:port]/system?keyfile=…`). The host's SSH
//! key is pinned at registration: the fleet admin confirms the key the host presents, it is
//! stored with the host, and every connection verifies against it — libvirt's libssh
//! transport with a known-hosts file this module writes from the stored key, so the check
//! does not depend on whose `~/.ssh/known_hosts` the server runs with, and every replica
//! checks the same key. `no_verify=1` in the URI skips the check; the host page says so.
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const SSH_SCHEMES: [&str; 3] = ["qemu+ssh://", "qemu+libssh://", "qemu+libssh2://"];

/// Whether `uri` reaches its host over SSH.
pub fn is_ssh(uri: &str) -> bool {
    SSH_SCHEMES.iter().any(|s| uri.starts_with(s))
}

/// The URI's query parameters, in order.
fn params(uri: &str) -> Vec<(&str, &str)> {
    uri.split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|p| p.split_once('=')).collect())
        .unwrap_or_default()
}

/// Whether the URI turns the host key check off (`no_verify=1`, or libssh's
/// `known_hosts_verify=ignore`).
pub fn unverified(uri: &str) -> bool {
    params(uri).iter().any(|(k, v)| {
        (*k == "no_verify" && *v != "0") || (*k == "known_hosts_verify" && *v == "ignore")
    })
}

/// Host and port of an SSH URI, as `ssh-keyscan` and known-hosts files name them. A host
/// that would read as an option (`-…`) is none.
fn endpoint(uri: &str) -> Option<(String, u16)> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() || host_port.starts_with('-') {
        return None;
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
        }
        _ => Some((host_port.trim_matches(['[', ']']).to_string(), 22)),
    }
}

/// A public key as `ssh-keyscan` prints it (`ssh-ed25519 AAAA…`, a host name first is
/// dropped) and its SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -l` prints it).
pub fn parse_key(line: &str) -> Option<(String, String)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let start = fields
        .iter()
        .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-"))?;
    let openssh = format!("{} {}", fields[start], fields.get(start + 1)?);
    let key = ssh_key::PublicKey::from_openssh(&openssh).ok()?;
    Some((
        openssh,
        key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
    ))
}

/// The keys the host presents now (one per type), read with `ssh-keyscan`.
pub async fn presented_keys(uri: &str) -> Result<Vec<(String, String)>, String> {
    let (host, port) = endpoint(uri).ok_or("the URI names no host")?;
    let out = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", "5", "-p", &port.to_string(), &host])
        .output()
        .await
        .map_err(|e| format!("could not run ssh-keyscan: {e}"))?;
    let keys: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(parse_key)
        .collect();
    if keys.is_empty() {
        return Err(format!("{host}:{port} presented no SSH host key"));
    }
    Ok(keys)
}

/// The URI to open for a host: an SSH host with a pinned key goes through libssh, checking
/// the key against a known-hosts file written from it (kept in this machine's temporary
/// folder, named after the host and key); anything else is opened as typed.
pub fn effective(uri: &str, pinned: Option<&str>) -> Result<String, String> {
    if !is_ssh(uri) || unverified(uri) {
        return Ok(uri.to_string());
    }
    let key = pinned.ok_or("no SSH host key is pinned for this host")?;
    let (host, port) = endpoint(uri).ok_or("the URI names no host")?;
    let name = if port == 22 {
        host.clone()
    } else {
        format!("[{host}]:{port}")
    };
    let line = format!("{name} {key}\n");
    let dir: PathBuf = std::env::temp_dir().join("concierge-known-hosts");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join(format!("{:x}", Sha256::digest(line.as_bytes())));
    if std::fs::read_to_string(&file).ok().as_deref() != Some(line.as_str()) {
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, &line).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &file).map_err(|e| e.to_string())?;
    }
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let mut kept: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split('=').next().unwrap_or_default();
            !matches!(k, "known_hosts" | "known_hosts_verify" | "no_verify")
        })
        .map(str::to_string)
        .collect();
    kept.push(format!("known_hosts={}", file.display()));
    kept.push("known_hosts_verify=normal".into());
    if !kept.iter().any(|p| p.starts_with("sshauth=")) {
        kept.push("sshauth=privkey,agent".into());
    }
    Ok(format!("qemu+libssh://{rest}?{}", kept.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_uris_are_recognised_and_opened_through_libssh_with_the_pinned_key() {
        let uri = "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k/id";
        assert!(is_ssh(uri) && !unverified(uri));
        assert!(unverified("qemu+ssh://kvm1/system?no_verify=1"));
        assert!(!is_ssh("qemu:///system"));
        assert_eq!(endpoint(uri), Some(("127.0.0.1".into(), 2222)));
        assert_eq!(
            endpoint("qemu+ssh://admin@kvm1/system"),
            Some(("kvm1".into(), 22))
        );
        assert_eq!(endpoint("qemu+ssh://-oProxyCommand=x/system"), None);
        assert_eq!(endpoint("qemu+ssh:///system"), None);
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAw/1oZKrJNO9VTihi/SaaZBBZfIx6FXH2oQhBb93w6s";
        let (line, fingerprint) = parse_key(&format!("[127.0.0.1]:2222 {key}")).unwrap();
        assert_eq!(line, key);
        assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
        let opened = effective(uri, Some(key)).unwrap();
        assert!(
            opened
                .starts_with("qemu+libssh://root@127.0.0.1:2222/system?keyfile=/k/id&known_hosts="),
            "{opened}"
        );
        assert!(opened.contains("known_hosts_verify=normal"));
        let file = opened
            .split("known_hosts=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(file).unwrap(),
            format!("[127.0.0.1]:2222 {key}\n")
        );
        // Unpinned, it is refused; unverified or local, opened as typed.
        assert!(effective(uri, None).is_err());
        assert_eq!(effective("qemu:///system", None).unwrap(), "qemu:///system");
    }
}
