//! `concierge audit verify`: checks the audit chains in the database, or in an export, against
//! the signed checkpoints. Exit status 0 when every chain is intact, 1 when one is not.
use super::chain::{self, Checkpoint, Outcome, SealedRow, Start, Walker};
use super::integrity;
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "concierge audit",
    about = "Verify the tamper-evident audit trail"
)]
pub struct AuditCommand {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Walk every audit chain and report "intact up to N" or the first broken, missing or
    /// reordered row.
    Verify(VerifyArgs),
}

#[derive(Parser, Debug)]
pub struct VerifyArgs {
    /// The database (the schema owner's URL, as the server is given).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Verify this export (JSON Lines, from the audit page) instead of the database.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// An exported checkpoint file (audit page, "Checkpoints"): its public key is the one
    /// trusted, and its checkpoints must be reproduced by the rows.
    #[arg(long)]
    pub checkpoints: Option<PathBuf>,
    /// The server's signing key file, to trust its public half (when no checkpoint file is
    /// given).
    #[arg(long, env = "CONCIERGE_AUDIT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Start at the newest checkpoint with at most this id instead of each chain's first row
    /// (the rows before it are vouched for by its signature).
    #[arg(long)]
    pub since: Option<i64>,
}

#[derive(serde::Deserialize)]
struct CheckpointFile {
    public_key: String,
    checkpoints: Vec<Checkpoint>,
}

/// Runs the command; the process exit code.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<i32> {
    let What::Verify(args) = cmd.what;
    let (trusted, exported) = match &args.checkpoints {
        Some(path) => {
            let file: CheckpointFile = serde_json::from_slice(&std::fs::read(path)?)
                .map_err(|e| anyhow::anyhow!("{}: not a checkpoint export: {e}", path.display()))?;
            let key: [u8; 32] = hex::decode(&file.public_key)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("{}: public_key is not a key", path.display()))?;
            (
                Some(ed25519_dalek::VerifyingKey::from_bytes(&key)?),
                file.checkpoints,
            )
        }
        None => match &args.key_file {
            Some(path) if path.exists() => (
                Some(chain::load_or_create_key(path)?.verifying_key()),
                vec![],
            ),
            _ => (None, vec![]),
        },
    };
    if trusted.is_none() {
        println!("note: no checkpoint file or key file given: each checkpoint is checked against the key it names");
    }
    let outcomes = match &args.file {
        Some(path) => verify_file(path, &exported, trusted.as_ref(), args.since)?,
        None => {
            let url = args.database_url.as_deref().ok_or_else(|| {
                anyhow::anyhow!("give --database-url (or DATABASE_URL), or --file EXPORT")
            })?;
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
            integrity::verify(
                &mut conn,
                integrity::Verify {
                    chains: None,
                    since: args.since,
                    exported: &exported,
                    trusted: trusted.as_ref(),
                },
            )
            .await?
        }
    };
    let mut broken = false;
    for o in &outcomes {
        println!("{}", describe(o));
        broken |= o.problem.is_some();
    }
    if outcomes.is_empty() {
        println!("no audit chains found");
    }
    Ok(i32::from(broken))
}

/// One line per chain.
pub fn describe(o: &Outcome) -> String {
    let name = if o.chain == chain::FLEET_CHAIN {
        "fleet chain".to_string()
    } else {
        format!("tenant {} chain", o.chain)
    };
    match &o.problem {
        None => format!(
            "{name}: intact up to {} ({} signed checkpoints reproduced)",
            o.intact_to, o.checkpoints_matched
        ),
        Some(p) => format!("{name}: BROKEN: intact up to {}, then {p}", o.intact_to),
    }
}

/// Walks an export offline: rows in chain and sequence order, as the audit page writes them.
fn verify_file(
    path: &std::path::Path,
    exported: &[Checkpoint],
    trusted: Option<&ed25519_dalek::VerifyingKey>,
    since: Option<i64>,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = vec![];
    if let Err(p) = chain::check_signatures(exported, trusted) {
        anyhow::bail!("the checkpoint file: {p}");
    }
    let reader = std::io::BufReader::new(std::fs::File::open(path)?);
    // The chain being walked, its walker and the sequence number it starts after.
    let mut current: Option<(uuid::Uuid, Walker, i64)> = None;
    let mut seen = std::collections::BTreeSet::new();
    let walker_for = |chain: uuid::Uuid| {
        let start = since.and_then(|s| {
            exported
                .iter()
                .filter(|c| c.chain == chain && c.id <= s)
                .max_by_key(|c| c.seq)
        });
        match start {
            Some(c) => {
                let from = Start {
                    seq: c.seq,
                    head: &c.head,
                };
                (chain, Walker::new(chain, from, exported), c.seq)
            }
            None => (chain, Walker::new(chain, Start::GENESIS, exported), 0),
        }
    };
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: SealedRow = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), n + 1))?;
        let chain: uuid::Uuid = row.chain.parse()?;
        if current.as_ref().map(|(c, _, _)| *c) != Some(chain) {
            if let Some((_, w, _)) = current.take() {
                outcomes.push(w.finish(None));
            }
            seen.insert(chain);
            current = Some(walker_for(chain));
        }
        if let Some((_, w, after)) = current.as_mut() {
            if row.seq > *after {
                w.row(&row);
            }
        }
    }
    if let Some((_, w, _)) = current.take() {
        outcomes.push(w.finish(None));
    }
    // A chain the checkpoints know but the file lacks lost all its rows.
    let missing: std::collections::BTreeSet<uuid::Uuid> = exported
        .iter()
        .map(|c| c.chain)
        .filter(|c| !seen.contains(c))
        .collect();
    for chain in missing {
        outcomes.push(walker_for(chain).1.finish(None));
    }
    Ok(outcomes)
}
