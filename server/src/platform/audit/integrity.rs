//! The audit chains in the database: walking them, signing checkpoints of their heads (once
//! per cluster, on a timer), and what the audit page shows of them.
use super::chain::{self, Checkpoint, Outcome, SealedRow, Start, Walker, FLEET_CHAIN};
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::TryStreamExt;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const CHECKPOINT_COLUMNS: &str = "id, chain, seq, head,
    to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS at,
    prev_signature, public_key, signature";

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    id: i64,
    chain: Uuid,
    seq: i64,
    head: Vec<u8>,
    at: String,
    prev_signature: Option<Vec<u8>>,
    public_key: Vec<u8>,
    signature: Vec<u8>,
}

impl From<CheckpointRow> for Checkpoint {
    fn from(r: CheckpointRow) -> Self {
        Checkpoint {
            id: r.id,
            chain: r.chain,
            seq: r.seq,
            head: r.head,
            at: r.at,
            prev_signature: r.prev_signature,
            public_key: r.public_key,
            signature: r.signature,
        }
    }
}

/// Checkpoints of `chains` (all when `None`), oldest first per chain.
pub async fn checkpoints(
    conn: &mut PgConnection,
    chains: Option<&[Uuid]>,
) -> Result<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints
         WHERE $1::uuid[] IS NULL OR chain = ANY($1) ORDER BY chain, seq"
    ))
    .bind(chains)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(Checkpoint::from).collect())
}

/// Walks `chain` from `start` over the rows in the database, comparing with the `promised`
/// checkpoints and, at the end, with the chain's recorded head.
pub async fn walk(
    conn: &mut PgConnection,
    chain: Uuid,
    start: Start<'_>,
    promised: &[Checkpoint],
) -> Result<Outcome> {
    let head: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_chains WHERE chain = $1")
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await?;
    let mut walker = Walker::new(chain, start, promised);
    let sql = format!(
        "SELECT {} FROM audit_log a WHERE a.chain = $1 AND a.seq > $2 ORDER BY a.seq",
        chain::SEALED_COLUMNS
    );
    {
        let mut rows = sqlx::query_as::<_, SealedRow>(&sql)
            .bind(chain)
            .bind(start.seq)
            .fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            if !walker.row(&row) {
                break;
            }
        }
    }
    let mut outcome = walker.finish(head);
    if outcome.problem.is_none() {
        // Rows that never went through the seal (written with its trigger switched off).
        let unsealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_log WHERE seq IS NULL AND coalesce(tenant_id, $2) = $1",
        )
        .bind(chain)
        .bind(FLEET_CHAIN)
        .fetch_one(&mut *conn)
        .await?;
        if unsealed > 0 {
            outcome.problem = Some(format!("{unsealed} rows were never sealed into the chain"));
        }
    }
    Ok(outcome)
}

/// What to verify and against what.
#[derive(Default)]
pub struct Verify<'a> {
    /// Only these chains (else every chain the database knows).
    pub chains: Option<Vec<Uuid>>,
    /// Start each chain at its newest checkpoint with at most this id (trusted after its
    /// signature is checked), instead of at its first row.
    pub since: Option<i64>,
    /// Checkpoints from an exported file, checked besides the database's own.
    pub exported: &'a [Checkpoint],
    /// The key checkpoints must be signed with; else each is checked against the key it names.
    pub trusted: Option<&'a VerifyingKey>,
}

/// Verifies every chain of `what` from the database.
pub async fn verify(conn: &mut PgConnection, what: Verify<'_>) -> Result<Vec<Outcome>> {
    let chains: Vec<Uuid> = match &what.chains {
        Some(c) => c.clone(),
        None => sqlx::query_scalar(
            "SELECT chain FROM audit_chains UNION SELECT chain FROM audit_checkpoints ORDER BY 1",
        )
        .fetch_all(&mut *conn)
        .await?,
    };
    let stored = checkpoints(conn, Some(&chains)).await?;
    let mut out = Vec::with_capacity(chains.len());
    for chain in chains {
        let mine: Vec<Checkpoint> = stored
            .iter()
            .filter(|c| c.chain == chain)
            .cloned()
            .collect();
        let theirs: Vec<Checkpoint> = what
            .exported
            .iter()
            .filter(|c| c.chain == chain)
            .cloned()
            .collect();
        let fail = |problem: String| Outcome {
            chain,
            intact_to: 0,
            checkpoints_matched: 0,
            problem: Some(problem),
            head: vec![],
        };
        if let Err(p) = chain::check_signatures(&mine, what.trusted) {
            out.push(fail(p));
            continue;
        }
        if let Err(p) = chain::check_signatures(&theirs, what.trusted) {
            out.push(fail(format!("in the exported file, {p}")));
            continue;
        }
        // The same sequence number promised two heads: the database's checkpoint was replaced.
        let by_seq: BTreeMap<i64, &Checkpoint> = mine.iter().map(|c| (c.seq, c)).collect();
        if let Some(c) = theirs
            .iter()
            .find(|c| by_seq.get(&c.seq).is_some_and(|m| m.head != c.head))
        {
            out.push(fail(format!(
                "the database's checkpoint at row {} differs from the exported one",
                c.seq
            )));
            continue;
        }
        let promised: Vec<Checkpoint> = mine.iter().chain(theirs.iter()).cloned().collect();
        let start = what.since.and_then(|since| {
            promised
                .iter()
                .filter(|c| c.id <= since)
                .max_by_key(|c| c.seq)
                .cloned()
        });
        let outcome = match &start {
            Some(c) => {
                walk(
                    conn,
                    chain,
                    Start {
                        seq: c.seq,
                        head: &c.head,
                    },
                    &promised,
                )
                .await?
            }
            None => walk(conn, chain, Start::GENESIS, &promised).await?,
        };
        out.push(outcome);
    }
    Ok(out)
}

/// Writes what a verification found, for the audit page.
pub async fn record(
    conn: &mut PgConnection,
    outcome: &Outcome,
    at: time::OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_checks (chain, checked_at, intact_to, problem) VALUES ($1, $2, $3, $4)
         ON CONFLICT (chain) DO UPDATE SET checked_at = $2, intact_to = $3, problem = $4",
    )
    .bind(outcome.chain)
    .bind(at)
    .bind(outcome.intact_to)
    .bind(&outcome.problem)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Signs checkpoints of the chains' heads.
pub struct Checkpointer {
    pub pool: PgPool,
    pub key: Arc<SigningKey>,
    pub clock: Arc<dyn Clock>,
}

impl Checkpointer {
    /// One round, once per cluster: every chain that grew since its last checkpoint is walked
    /// from that checkpoint (so a round reads only the new rows) and, when intact, its head is
    /// signed. A broken chain is recorded and never signed.
    pub async fn tick(&self) -> Result<usize> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        if !crate::platform::cluster::once(&mut tx, "audit-checkpoint").await? {
            return Ok(0);
        }
        let grown: Vec<Uuid> = sqlx::query_scalar(
            "SELECT c.chain FROM audit_chains c
             WHERE c.seq > coalesce((SELECT max(k.seq) FROM audit_checkpoints k WHERE k.chain = c.chain), 0)
             ORDER BY c.chain",
        )
        .fetch_all(&mut *tx)
        .await?;
        let own = self.key.verifying_key();
        let now = self.clock.now();
        let mut signed = 0;
        for chain in grown {
            let last: Option<Checkpoint> = sqlx::query_as::<_, CheckpointRow>(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE chain = $1 ORDER BY seq DESC LIMIT 1"
            ))
            .bind(chain)
            .fetch_optional(&mut *tx)
            .await?
            .map(Checkpoint::from);
            let outcome = match &last {
                Some(c) if !c.signature_holds(Some(&own)) => Outcome {
                    chain,
                    intact_to: c.seq,
                    checkpoints_matched: 0,
                    problem: Some(format!(
                        "checkpoint {} (row {}) is not signed by this server's audit key",
                        c.id, c.seq
                    )),
                    head: vec![],
                },
                Some(c) => {
                    walk(
                        &mut tx,
                        chain,
                        Start {
                            seq: c.seq,
                            head: &c.head,
                        },
                        &[],
                    )
                    .await?
                }
                None => walk(&mut tx, chain, Start::GENESIS, &[]).await?,
            };
            record(&mut tx, &outcome, now).await?;
            if let Some(p) = &outcome.problem {
                tracing::error!(%chain, problem = %p, "the audit chain is broken: not signed");
                continue;
            }
            let at = chain::time_text(now);
            let prev = last.as_ref().map(|c| c.signature.as_slice());
            let signature = chain::sign(
                &self.key,
                chain,
                outcome.intact_to,
                &outcome.head,
                &at,
                prev,
            );
            sqlx::query(
                "INSERT INTO audit_checkpoints (chain, seq, head, at, prev_signature, public_key, signature)
                 VALUES ($1, $2, $3, $4::timestamptz, $5, $6, $7) ON CONFLICT (chain, seq) DO NOTHING",
            )
            .bind(chain)
            .bind(outcome.intact_to)
            .bind(&outcome.head)
            .bind(&at)
            .bind(prev)
            .bind(own.to_bytes().as_slice())
            .bind(&signature)
            .execute(&mut *tx)
            .await?;
            signed += 1;
        }
        tx.commit().await?;
        Ok(signed)
    }

    pub fn spawn(self: Arc<Self>, every: std::time::Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match self.tick().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(chains = n, "audit checkpoints signed"),
                    Err(e) => tracing::warn!(error = %e, "audit checkpoints"),
                }
            }
        });
    }
}
