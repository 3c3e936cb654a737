//! The background copy of an image from one host to another (job `image_copy`, keyed by
//! `copy_key`): the volume streams through this server from a host that holds a ready copy
//! (libvirt download there, upload on the target) and is checked against the image's SHA-256;
//! the job queue retries a failed attempt, and one that fails for good marks the copy failed.
use crate::hypervisor::{storage, Hypervisors};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use crate::platform::jobs::{Job, Outcome};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// The copy job's key: one live copy per image and host.
pub fn copy_key(image: Uuid, host: Uuid) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(image.as_bytes())
        .chain_update(host.as_bytes())
        .finalize();
    Uuid::from_slice(&digest[..16]).expect("16 bytes")
}

#[derive(sqlx::FromRow)]
struct CopyJob {
    source_host: Uuid,
    source_pool: String,
    pool: String,
    volume: String,
    kernel: Option<String>,
    initrd: Option<String>,
    sha256: Option<String>,
    state: String,
}

async fn load_copy(pool: &PgPool, image: Uuid, host: Uuid) -> Result<Option<CopyJob>> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    Ok(sqlx::query_as(
        "SELECT s.host_id AS source_host, s.pool AS source_pool, c.pool, c.volume, c.kernel, c.initrd,
                i.sha256, c.state
         FROM image_copies c JOIN images i ON i.id = c.image_id
         JOIN LATERAL (SELECT host_id, pool FROM image_copies s
                       WHERE s.image_id = c.image_id AND s.state = 'ready' ORDER BY s.updated_at LIMIT 1) s ON true
         WHERE c.image_id = $1 AND c.host_id = $2",
    )
    .bind(image)
    .bind(host)
    .fetch_optional(&mut *tx)
    .await?)
}

fn job_target(job: &Job) -> Result<(Uuid, Uuid), Outcome> {
    let field = |k: &str| {
        job.payload
            .get(k)
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| Outcome::Fail(format!("the job has no {k}")))
    };
    Ok((field("image")?, field("host")?))
}

/// Rewrites a volume's first bytes on the way (at least `HEAD` of them, or the whole volume
/// when smaller): a moved VM's qcow2 header names its new backing file. An error stops the copy.
pub type Patch = Box<dyn FnOnce(&mut Vec<u8>) -> Result<(), String> + Send>;

/// How much of a volume a `Patch` sees at once: the largest qcow2 header cluster.
const HEAD: usize = 2 << 20;

/// Streams one volume from one host to another: libvirt download on the source, upload on the
/// target, each on its own blocking thread, joined by a small bounded channel. Returns the
/// SHA-256 of what was read from the source.
pub async fn transfer(
    hypervisors: &Hypervisors,
    from: (Uuid, String),
    to: (Uuid, String),
    name: String,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
    patch: Option<Patch>,
) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let refused = Arc::new(std::sync::Mutex::new(None::<String>));
    let why = refused.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (length_tx, length_rx) = std::sync::mpsc::sync_channel::<u64>(1);
    let (src_pool, src_name) = (from.1.clone(), name.clone());
    let download = hypervisors.call(from.0, move |conn| {
        let vol = conn
            .lookup_storage_pool_by_name(&src_pool)?
            .lookup_storage_vol_by_name(&src_name)?;
        // The file's own length (for qcow2 the capacity is the guest's disk size).
        let length = vol.info_flags(1)?.allocation;
        let _ = length_tx.send(length);
        let stream = virt::stream::Stream::new(conn, 0)?;
        vol.download(&stream, 0, 0, 0)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut patch = patch;
        let mut head: Vec<u8> = Vec::new();
        // Passes the held head through the patch (once) and on.
        let flush = |head: &mut Vec<u8>, patch: &mut Option<Patch>| -> bool {
            if let Some(p) = patch.take() {
                if let Err(e) = p(head) {
                    *why.lock().expect("refusal") = Some(e);
                    return false;
                }
            }
            tx.send(std::mem::take(head)).is_ok()
        };
        loop {
            let n = stream.recv(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n as usize];
            hasher.update(chunk);
            let sent = if patch.is_some() {
                head.extend_from_slice(chunk);
                head.len() < HEAD || flush(&mut head, &mut patch)
            } else {
                tx.send(chunk.to_vec()).is_ok()
            };
            if !sent {
                let _ = stream.abort();
                return Err(virt::error::Error::last_error());
            }
        }
        if patch.is_some() && !flush(&mut head, &mut patch) {
            let _ = stream.abort();
            return Err(virt::error::Error::last_error());
        }
        stream.finish()?;
        Ok(format!("{:x}", hasher.finalize()))
    });
    let (dst_pool, dst_name) = (to.1.clone(), name.clone());
    let upload = hypervisors.call(to.0, move |conn| {
        let Ok(length) = length_rx.recv() else {
            return Err(virt::error::Error::last_error());
        };
        let reader = ChannelReader {
            rx,
            pending: Vec::new(),
            at: 0,
            progress,
        };
        storage::upload_volume(
            conn,
            &dst_pool,
            &dst_name,
            storage::Format::Raw,
            reader,
            length,
        )
    });
    let (sha, uploaded) = tokio::join!(download, upload);
    if let Some(e) = refused.lock().expect("refusal").take() {
        return Err(e);
    }
    uploaded?;
    sha
}

/// `Read` over the chunks another thread downloads.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.pending.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        if let Some(p) = &self.progress {
            p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// The `image_copy` job: copies disk, kernel and initramfs, checks the disk's SHA-256 against
/// the image's, and makes the copy ready. Idempotent: a rerun uploads the volumes afresh.
pub async fn run_copy(pool: &PgPool, hypervisors: &Hypervisors, job: &Job) -> Result<(), Outcome> {
    let (image, host) = job_target(job)?;
    let Some(copy) = load_copy(pool, image, host).await? else {
        // Discarded meanwhile, or no ready copy is left to copy from.
        return Ok(());
    };
    if copy.state == "ready" {
        return Ok(());
    }
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Progress for the page, every second, while the disk streams.
    let reporter = {
        let (pool, done) = (pool.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let bytes = done.load(std::sync::atomic::Ordering::Relaxed) as i64;
                let _ = sqlx::query(
                    "UPDATE image_copies SET bytes_done = $3, updated_at = now()
                     WHERE image_id = $1 AND host_id = $2 AND state = 'copying'",
                )
                .bind(image)
                .bind(host)
                .bind(bytes)
                .execute(&pool)
                .await;
            }
        })
    };
    let from = |name: &str| {
        (
            (copy.source_host, copy.source_pool.clone()),
            name.to_string(),
        )
    };
    let mut result = Ok(());
    let (src, name) = from(&copy.volume);
    match transfer(
        hypervisors,
        src,
        (host, copy.pool.clone()),
        name,
        Some(done.clone()),
        None,
    )
    .await
    {
        Ok(sha) if copy.sha256.as_ref().is_none_or(|want| *want == sha) => {}
        Ok(sha) => {
            result = Err(format!(
                "the copy's SHA-256 {sha} differs from the image's; the source volume has changed"
            ))
        }
        Err(e) => result = Err(e),
    }
    for name in [&copy.kernel, &copy.initrd].into_iter().flatten() {
        if result.is_ok() {
            let (src, name) = from(name);
            if let Err(e) = transfer(
                hypervisors,
                src,
                (host, copy.pool.clone()),
                name,
                None,
                None,
            )
            .await
            {
                result = Err(e);
            }
        }
    }
    reporter.abort();
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    match &result {
        Ok(()) => {
            sqlx::query(
                "UPDATE image_copies SET state = 'ready', bytes_done = coalesce(bytes_total, $3), error = NULL, updated_at = now()
                 WHERE image_id = $1 AND host_id = $2",
            )
            .bind(image)
            .bind(host)
            .bind(done.load(std::sync::atomic::Ordering::Relaxed) as i64)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::default(),
                Event::new("image.copy.finish", "image", image).after(json!({ "host": host })),
            )
            .await?;
        }
        Err(e) => {
            sqlx::query(
                "UPDATE image_copies SET error = $3, updated_at = now() WHERE image_id = $1 AND host_id = $2",
            )
            .bind(image)
            .bind(host)
            .bind(e)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    result.map_err(Outcome::Retry)
}

/// The copy failed for good: say so on the copy (the admin discards it, which removes what
/// was written).
pub async fn copy_failed(pool: &PgPool, job: &Job, error: &str) {
    let Ok((image, host)) = job_target(job) else {
        return;
    };
    let result = sqlx::query(
        "UPDATE image_copies SET state = 'failed', error = $3, updated_at = now()
         WHERE image_id = $1 AND host_id = $2 AND state = 'copying'",
    )
    .bind(image)
    .bind(host)
    .bind(error)
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!(error = ?e, "marking an image copy failed");
    }
}
