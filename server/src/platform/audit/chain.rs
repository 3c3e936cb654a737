//! The audit chain (migration 37 seals it): the canonical form of a row, signed checkpoints of
//! each chain's head, and verification that walks a chain from the database or from an export.
//!
//! A row's canonical form is its fields in a fixed order, each written as `<UTF-8 length>:<text>`
//! or `-` for NULL: chain, time (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC), actor id, actor e-mail,
//! tenant id, action, object type, object id, before (JSON text as stored), after, client
//! address. `row_hash = SHA-256(prev_hash ‖ canonical)`, and the first row's `prev_hash` is 32
//! zero bytes. Keeping `prev_hash` on each row tells a changed row (its own hash fails) from a
//! moved one (its hash holds but it does not follow its predecessor).
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;

/// The fleet's chain (rows of no tenant).
pub const FLEET_CHAIN: Uuid = Uuid::nil();

const GENESIS: [u8; 32] = [0; 32];

/// One sealed row as the verifier and the export see it: every field as the text that was
/// hashed.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, PartialEq, Eq)]
pub struct SealedRow {
    pub chain: String,
    pub seq: i64,
    pub at: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub tenant_id: Option<String>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<String>,
    pub before: Option<String>,
    pub after: Option<String>,
    pub client_addr: Option<String>,
    #[serde(with = "hex::serde")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub row_hash: Vec<u8>,
}

/// The columns of `SealedRow`, formatted by the query itself rather than by a database
/// function someone could replace.
pub const SEALED_COLUMNS: &str = "a.chain::text AS chain, a.seq,
    to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at,
    a.actor_id::text AS actor_id, a.actor_email, a.tenant_id::text AS tenant_id, a.action,
    a.object_type, a.object_id, a.before::text AS before, a.after::text AS after,
    host(a.client_addr) AS client_addr, a.prev_hash, a.row_hash";

fn field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => {
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(v.as_bytes());
        }
        None => out.push(b'-'),
    }
}

impl SealedRow {
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        for v in [
            Some(self.chain.as_str()),
            Some(self.at.as_str()),
            self.actor_id.as_deref(),
            self.actor_email.as_deref(),
            self.tenant_id.as_deref(),
            Some(self.action.as_str()),
            Some(self.object_type.as_str()),
            self.object_id.as_deref(),
            self.before.as_deref(),
            self.after.as_deref(),
            self.client_addr.as_deref(),
        ] {
            field(&mut out, v);
        }
        out
    }

    /// SHA-256 of `prev` and this row's canonical form.
    pub fn hash_after(&self, prev: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.canonical());
        h.finalize().into()
    }
}

/// A signed statement that chain `chain` had `seq` rows ending in `head` at `at`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub chain: Uuid,
    pub seq: i64,
    #[serde(with = "hex::serde")]
    pub head: Vec<u8>,
    /// UTC, microseconds, in the canonical time format.
    pub at: String,
    #[serde(with = "opt_hex")]
    pub prev_signature: Option<Vec<u8>>,
    #[serde(with = "hex::serde")]
    pub public_key: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| hex::decode(h).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Checkpoint {
    /// What the key signs.
    pub fn message(
        chain: Uuid,
        seq: i64,
        head: &[u8],
        at: &str,
        prev_signature: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = b"concierge-audit-checkpoint-v1\n".to_vec();
        field(&mut out, Some(&chain.to_string()));
        field(&mut out, Some(&seq.to_string()));
        field(&mut out, Some(&hex::encode(head)));
        field(&mut out, Some(at));
        field(&mut out, prev_signature.map(hex::encode).as_deref());
        out
    }

    /// Signed by `trusted` (when given, else by the key it names) and well formed.
    pub fn signature_holds(&self, trusted: Option<&VerifyingKey>) -> bool {
        let Ok(key_bytes) = <[u8; 32]>::try_from(self.public_key.as_slice()) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&key_bytes) else {
            return false;
        };
        if trusted.is_some_and(|t| t != &key) {
            return false;
        }
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&self.signature) else {
            return false;
        };
        let msg = Self::message(
            self.chain,
            self.seq,
            &self.head,
            &self.at,
            self.prev_signature.as_deref(),
        );
        key.verify(&msg, &sig).is_ok()
    }
}

pub fn sign(
    key: &SigningKey,
    chain: Uuid,
    seq: i64,
    head: &[u8],
    at: &str,
    prev_signature: Option<&[u8]>,
) -> Vec<u8> {
    key.sign(&Checkpoint::message(chain, seq, head, at, prev_signature))
        .to_bytes()
        .to_vec()
}

/// The canonical time text of `at` (microseconds, UTC).
pub fn time_text(at: time::OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The checkpoint signing key: read from `path`, or made there on first start, readable by
/// this user only. The file holds the 32-byte secret in hex.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let meta = std::fs::metadata(path)?;
            if meta.permissions().mode() & 0o077 != 0 {
                anyhow::bail!(
                    "the audit signing key {} is readable by others: chmod 600 it",
                    path.display()
                );
            }
            let bytes: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{} does not hold an audit signing key (64 hex digits)",
                        path.display()
                    )
                })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let mut seed = [0u8; 32];
            rand::fill(&mut seed);
            // Written whole under a temporary name, then linked into place: a second process
            // starting at the same moment reads either no file or the whole key.
            let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
            {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                writeln!(f, "{}", hex::encode(seed))?;
                f.sync_all()?;
            }
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "audit signing key created");
                    Ok(SigningKey::from_bytes(&seed))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(anyhow::anyhow!("creating {}: {e}", path.display())),
            }
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Where a walk starts: the beginning, or a checkpoint already trusted.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    pub seq: i64,
    pub head: &'a [u8],
}

impl Start<'_> {
    pub const GENESIS: Start<'static> = Start {
        seq: 0,
        head: &GENESIS,
    };
}

/// What a walk found for one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub chain: Uuid,
    /// Rows verified from the start (or the checkpoint started from), in order.
    pub intact_to: i64,
    /// Checkpoints whose head the walk reproduced.
    pub checkpoints_matched: usize,
    /// The first problem: a changed, missing, moved or extra row, a checkpoint the rows do
    /// not reproduce, or a tail cut off.
    pub problem: Option<String>,
    /// The hash of row `intact_to`.
    #[serde(with = "hex::serde")]
    pub head: Vec<u8>,
}

/// Walks one chain's rows in sequence order.
pub struct Walker {
    chain: Uuid,
    chain_text: String,
    next: i64,
    prev: Vec<u8>,
    /// Heads the signed checkpoints promise, by sequence number.
    promised: BTreeMap<i64, (i64, Vec<u8>)>,
    matched: usize,
    problem: Option<String>,
}

impl Walker {
    /// `checkpoints`: this chain's checkpoints whose signatures were checked.
    pub fn new(chain: Uuid, start: Start<'_>, checkpoints: &[Checkpoint]) -> Self {
        Walker {
            chain,
            chain_text: chain.to_string(),
            next: start.seq + 1,
            prev: start.head.to_vec(),
            promised: checkpoints
                .iter()
                .filter(|c| c.chain == chain && c.seq > start.seq)
                .map(|c| (c.seq, (c.id, c.head.clone())))
                .collect(),
            matched: 0,
            problem: None,
        }
    }

    /// Takes the next row; false once a problem is found (the rest is not read).
    pub fn row(&mut self, row: &SealedRow) -> bool {
        if self.problem.is_some() {
            return false;
        }
        let seq = row.seq;
        if row.chain != self.chain_text {
            self.problem = Some(format!("row {seq} belongs to another chain"));
        } else if seq < self.next {
            self.problem = Some(format!("row {seq} appears twice"));
        } else if seq > self.next {
            self.problem = Some(if seq == self.next + 1 {
                format!("row {} is missing", self.next)
            } else {
                format!("rows {} to {} are missing", self.next, seq - 1)
            });
        } else {
            let h = row.hash_after(&self.prev);
            if h.as_slice() == row.row_hash.as_slice() {
                self.prev = h.to_vec();
                self.next += 1;
                if let Some((id, head)) = self.promised.remove(&seq) {
                    if head == self.prev {
                        self.matched += 1;
                    } else {
                        self.problem = Some(format!(
                            "checkpoint {id} does not match row {seq}: the chain was rewritten"
                        ));
                    }
                }
            } else if row.hash_after(&row.prev_hash).as_slice() == row.row_hash.as_slice() {
                self.problem = Some(format!(
                    "row {seq} does not follow row {}: rows were removed or moved here",
                    seq - 1
                ));
            } else {
                self.problem = Some(format!("row {seq} was changed after it was sealed"));
            }
        }
        self.problem.is_none()
    }

    /// After the last row: `head` is what the database says the chain holds (when read from
    /// it); a head or checkpoint beyond the rows means the tail was cut off.
    pub fn finish(mut self, head: Option<i64>) -> Outcome {
        let last = self.next - 1;
        if self.problem.is_none() {
            let beyond = self
                .promised
                .iter()
                .find(|(seq, _)| **seq > last)
                .map(|(seq, (id, _))| (*seq, format!("checkpoint {id}")));
            let beyond = beyond.or_else(|| {
                head.filter(|h| *h > last)
                    .map(|h| (h, "the chain's head".to_string()))
            });
            if let Some((to, who)) = beyond {
                self.problem = Some(format!(
                    "rows {} to {to} are missing: {who} says the chain has {to} rows",
                    last + 1
                ));
            }
        }
        Outcome {
            chain: self.chain,
            intact_to: last,
            checkpoints_matched: self.matched,
            problem: self.problem,
            head: self.prev,
        }
    }
}

/// Checks a list of checkpoints of one chain: each signed by the trusted key and following
/// the one before it. The first one that does not is the problem.
pub fn check_signatures(
    checkpoints: &[Checkpoint],
    trusted: Option<&VerifyingKey>,
) -> Result<(), String> {
    let mut prev: BTreeMap<Uuid, &Checkpoint> = BTreeMap::new();
    for c in checkpoints {
        if !c.signature_holds(trusted) {
            return Err(format!(
                "checkpoint {} (row {}) is not signed by the audit key",
                c.id, c.seq
            ));
        }
        if let Some(p) = prev.get(&c.chain) {
            if c.prev_signature.as_deref() != Some(p.signature.as_slice()) {
                return Err(format!(
                    "checkpoint {} does not follow checkpoint {}: checkpoints were removed",
                    c.id, p.id
                ));
            }
        }
        prev.insert(c.chain, c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &[u8], action: &str) -> SealedRow {
        let mut r = SealedRow {
            chain: FLEET_CHAIN.to_string(),
            seq,
            at: "2026-12-07T10:00:00.000001Z".into(),
            actor_id: None,
            actor_email: Some("ann@example.com".into()),
            tenant_id: None,
            action: action.into(),
            object_type: "vm".into(),
            object_id: Some("x".into()),
            before: None,
            after: Some(r#"{"name": "é"}"#.into()),
            client_addr: Some("127.0.0.1".into()),
            prev_hash: prev.to_vec(),
            row_hash: vec![],
        };
        r.row_hash = r.hash_after(prev).to_vec();
        r
    }

    fn chain(n: i64) -> Vec<SealedRow> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|s| {
                let r = row(s, &prev, &format!("a.{s}"));
                prev = r.row_hash.clone();
                r
            })
            .collect()
    }

    fn walk(rows: &[SealedRow], head: Option<i64>) -> Outcome {
        let mut w = Walker::new(FLEET_CHAIN, Start::GENESIS, &[]);
        for r in rows {
            if !w.row(r) {
                break;
            }
        }
        w.finish(head)
    }

    #[test]
    fn the_canonical_form_counts_bytes_and_marks_nulls() {
        let r = row(1, &GENESIS, "vm.start");
        let text = String::from_utf8(r.canonical()).unwrap();
        assert!(text.starts_with("36:00000000-0000-0000-0000-000000000000"));
        assert!(text.contains("-15:ann@example.com-8:vm.start"), "{text}");
        // "é" is two bytes.
        assert!(text.contains(r#"14:{"name": "é"}"#), "{text}");
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let rows = chain(5);
        assert_eq!(walk(&rows, Some(5)).problem, None);
        assert_eq!(walk(&rows, Some(5)).intact_to, 5);

        let mut changed = rows.clone();
        changed[2].actor_email = Some("mallory@example.com".into());
        let o = walk(&changed, None);
        assert_eq!(o.intact_to, 2);
        assert_eq!(o.problem.unwrap(), "row 3 was changed after it was sealed");

        let mut missing = rows.clone();
        missing.remove(1);
        assert_eq!(walk(&missing, None).problem.unwrap(), "row 2 is missing");

        let mut swapped = rows.clone();
        swapped.swap(1, 2);
        (swapped[1].seq, swapped[2].seq) = (2, 3);
        assert!(walk(&swapped, None)
            .problem
            .unwrap()
            .starts_with("row 2 does not follow row 1"));

        let cut = &rows[..3];
        assert_eq!(
            walk(cut, Some(5)).problem.unwrap(),
            "rows 4 to 5 are missing: the chain's head says the chain has 5 rows"
        );
    }

    #[test]
    fn checkpoints_are_signed_chained_and_matched() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let rows = chain(4);
        let mk = |id, seq: i64, prev: Option<&[u8]>| {
            let head = rows[seq as usize - 1].row_hash.clone();
            let at = "2026-12-07T10:00:00.000000Z";
            Checkpoint {
                id,
                chain: FLEET_CHAIN,
                seq,
                signature: sign(&key, FLEET_CHAIN, seq, &head, at, prev),
                head,
                at: at.into(),
                prev_signature: prev.map(<[u8]>::to_vec),
                public_key: key.verifying_key().to_bytes().to_vec(),
            }
        };
        let first = mk(1, 2, None);
        let second = mk(2, 4, Some(&first.signature));
        let trusted = key.verifying_key();
        assert_eq!(
            check_signatures(&[first.clone(), second.clone()], Some(&trusted)),
            Ok(())
        );
        // A checkpoint removed from the middle breaks the signatures' chain.
        let third = mk(3, 4, Some(&second.signature));
        assert!(check_signatures(&[first.clone(), third], Some(&trusted)).is_err());
        // Another key is not trusted.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(check_signatures(std::slice::from_ref(&first), Some(&other)).is_err());

        let mut w = Walker::new(
            FLEET_CHAIN,
            Start::GENESIS,
            &[first.clone(), second.clone()],
        );
        for r in &rows {
            assert!(w.row(r));
        }
        assert_eq!(w.finish(Some(4)).checkpoints_matched, 2);

        // A rewritten chain (hashes recomputed by whoever changed row 2) fails the checkpoint.
        let mut rewritten = rows.clone();
        rewritten[1].action = "other".into();
        let mut prev = rewritten[0].row_hash.clone();
        for r in rewritten.iter_mut().skip(1) {
            r.prev_hash = prev.clone();
            r.row_hash = r.hash_after(&prev).to_vec();
            prev = r.row_hash.clone();
        }
        let mut w = Walker::new(FLEET_CHAIN, Start::GENESIS, &[first, second]);
        for r in &rewritten {
            if !w.row(r) {
                break;
            }
        }
        assert_eq!(
            w.finish(None).problem.unwrap(),
            "checkpoint 1 does not match row 2: the chain was rewritten"
        );
    }
}
