//! The image library: the backend of the `Images` seam (the background copy of an image from
//! one host to another is `image_copy`). Over 600 lines because the seam's impl is one block:
//! import, upload (three steps), copy, forget, each audited. An image's format is detected from its bytes once, at import,
//! and pinned; its length and SHA-256 are what the host holds (read back through libvirt,
//! never taken from the browser's word).
use crate::catalog::image_copy::copy_key;
use crate::catalog::{parse_login_user, parse_text};
use crate::hypervisor::{image, storage, Hypervisors};
use crate::platform::audit::{self, Event, Origin};
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Error, Result};
use crate::platform::jobs::{self, JobKind, Queue};
use app::error::{AllValid, AppError};
use app::images::{
    Image, ImageCopy, RegisterImageForm, UploadForm, UploadTarget, UPLOAD_CHUNK_BYTES,
};
use app::seam::{Images, RequestCtx};
use async_trait::async_trait;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// The largest file the browser may upload.
pub const MAX_UPLOAD_BYTES: u64 = 256 << 30;

pub struct ImagesBackend {
    pub pool: PgPool,
    pub hypervisors: Arc<Hypervisors>,
    pub queue: Arc<Queue>,
}

/// What the library records of an image's bytes (None where the host cannot tell: the test
/// driver's volumes are not files).
#[derive(Debug, Clone)]
struct Facts {
    format: storage::Format,
    size: Option<i64>,
    virtual_size: Option<i64>,
    sha256: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ImageRow {
    id: Uuid,
    name: String,
    format: String,
    size_bytes: Option<i64>,
    virtual_size_bytes: Option<i64>,
    sha256: Option<String>,
    login_user: Option<String>,
    created_at: OffsetDateTime,
    copies: serde_json::Value,
    templates: Vec<String>,
}

const COPY_SELECT: &str = "SELECT pool, volume, kernel, initrd, state, bytes_done, bytes_total
     FROM image_copies WHERE image_id = $1 AND host_id = $2";

#[derive(sqlx::FromRow)]
struct CopyRow {
    pool: String,
    volume: String,
    kernel: Option<String>,
    initrd: Option<String>,
    state: String,
    bytes_done: i64,
    bytes_total: Option<i64>,
}

fn is_test_driver(conn: &virt::connect::Connect) -> bool {
    crate::hypervisor::is_test_driver(&conn.uri().unwrap_or_default())
}

/// A pool of the host, freshly listed, or the form's error for the `pool` field.
fn pool_named(
    conn: &virt::connect::Connect,
    name: &str,
) -> Result<virt::storage_pool::StoragePool, AppError> {
    let pool = conn
        .lookup_storage_pool_by_name(name)
        .map_err(|_| AppError::field("pool", "The host has no storage pool of that name."))?;
    // Volumes made behind libvirt's back (copied files) show after a refresh.
    let _ = pool.refresh(0);
    Ok(pool)
}

/// Reads and checks an image volume on its host (and that kernel and initramfs exist).
/// Errors name the form field they belong to.
async fn read_image(
    hypervisors: &Hypervisors,
    host: Uuid,
    pool: String,
    volume: String,
    boot: Option<(String, String)>,
    field: &'static str,
) -> Result<Facts, AppError> {
    hypervisors
        .call(host, move |conn| {
            let p = match pool_named(conn, &pool) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let vol = match p.lookup_storage_vol_by_name(&volume) {
                Ok(v) => v,
                Err(_) => {
                    return Ok(Err(AppError::field(
                        field,
                        "The pool has no volume of that name.",
                    )))
                }
            };
            if let Some((k, i)) = &boot {
                for (name, field) in [(k, "kernel"), (i, "initrd")] {
                    if p.lookup_storage_vol_by_name(name).is_err() {
                        return Ok(Err(AppError::field(
                            field,
                            "The pool has no volume of that name.",
                        )));
                    }
                }
            }
            if is_test_driver(conn) {
                let info = vol.info()?;
                return Ok(Ok(Facts {
                    format: storage::Format::Qcow2,
                    size: i64::try_from(info.allocation).ok(),
                    virtual_size: i64::try_from(info.capacity).ok(),
                    sha256: None,
                }));
            }
            Ok(match image::read_volume(conn, &pool, &volume, |_| {}) {
                Ok(read) => Ok(Facts {
                    format: read.facts.format,
                    size: i64::try_from(read.length).ok(),
                    virtual_size: i64::try_from(read.facts.virtual_size).ok(),
                    sha256: Some(read.sha256),
                }),
                Err(why) => Err(AppError::field(
                    field,
                    format!("This image cannot be used: {why}."),
                )),
            })
        })
        .await
        .map_err(|e| AppError::field("host", format!("The host cannot be read: {e}")))?
}

/// Templates boot linked clones of an image, which needs qcow2.
fn templates_take(format: storage::Format, field: &str) -> Result<(), AppError> {
    match format {
        storage::Format::Qcow2 => Ok(()),
        _ => Err(AppError::field(
            field,
            "This image is raw: convert it to qcow2 (qemu-img convert -O qcow2) so VMs can be linked clones of it.",
        )),
    }
}

/// An image templates use cannot go; the field constraints are in `db::map_err`'s table.
fn parse_boot(kernel: &str, initrd: &str) -> Result<Option<(String, String)>, AppError> {
    match (kernel.trim(), initrd.trim()) {
        ("", "") => Ok(None),
        (k, i) => (
            storage::parse_name(k, "kernel"),
            storage::parse_name(i, "initrd"),
        )
            .all_valid()
            .map(Some),
    }
}

/// The registration form, checked field by field.
struct Registration {
    name: String,
    host: Uuid,
    pool: String,
    volume: String,
    boot: Option<(String, String)>,
    login_user: Option<String>,
}

impl TryFrom<&RegisterImageForm> for Registration {
    type Error = AppError;

    fn try_from(form: &RegisterImageForm) -> Result<Self, AppError> {
        let name = parse_text(&form.name, "name", 80, true);
        let host = form
            .host
            .ok_or_else(|| AppError::field("host", "Choose the host that holds the volume."));
        let pool = storage::parse_name(&form.pool, "pool");
        let volume = storage::parse_name(&form.volume, "volume");
        let boot = parse_boot(&form.kernel, &form.initrd);
        let login_user = parse_login_user(&form.login_user, "login_user");
        let (name, host, pool, volume, boot, login_user) =
            (name, host, pool, volume, boot, login_user).all_valid()?;
        Ok(Self {
            name,
            host,
            pool,
            volume,
            boot,
            login_user,
        })
    }
}

impl ImagesBackend {
    /// Registers a volume as an image (also the template form's shortcut for a hand-named
    /// volume); an image already registered for that volume is returned as it is.
    /// With `of`, a volume on a host where that image has no copy yet becomes its copy there
    /// (when the bytes are the same).
    pub async fn register_volume(
        &self,
        req: &RequestCtx,
        form: &RegisterImageForm,
        of: Option<Uuid>,
    ) -> Result<Uuid, AppError> {
        req.fleet_admin()?;
        let r = Registration::try_from(form)?;
        if let Some((id, _)) = self.known_volume(&r).await? {
            return Ok(id);
        }
        Ok(self.register_new(req, &r, of).await?)
    }

    /// The image a volume already is, with its name.
    async fn known_volume(&self, r: &Registration) -> Result<Option<(Uuid, String)>> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query_as(
            "SELECT i.id, i.name FROM image_copies c JOIN images i ON i.id = c.image_id
             WHERE c.host_id = $1 AND c.pool = $2 AND c.volume = $3",
        )
        .bind(r.host)
        .bind(&r.pool)
        .bind(&r.volume)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::from)
    }

    /// Reads a volume no image holds yet and records it: a new image, or a copy of `of`.
    async fn register_new(
        &self,
        req: &RequestCtx,
        r: &Registration,
        of: Option<Uuid>,
    ) -> Result<Uuid> {
        let facts = read_image(
            &self.hypervisors,
            r.host,
            r.pool.clone(),
            r.volume.clone(),
            r.boot.clone(),
            "volume",
        )
        .await?;
        templates_take(facts.format, "volume")?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let existing: Option<(Option<String>, bool)> = match of {
            Some(of) => sqlx::query_as(
                "SELECT sha256, EXISTS (SELECT 1 FROM image_copies c WHERE c.image_id = i.id AND c.host_id = $2)
                 FROM images i WHERE id = $1",
            )
            .bind(of)
            .bind(r.host)
            .fetch_optional(&mut *tx)
            .await?,
            None => None,
        };
        let (id, new_image) = match (of, existing) {
            (Some(of), Some((sha, false))) => {
                if matches!((&sha, &facts.sha256), (Some(a), Some(b)) if a != b) {
                    return Err(AppError::field(
                        "volume",
                        "This volume is not the template's image (its SHA-256 differs).",
                    )
                    .into());
                }
                (of, false)
            }
            _ => (self.insert_image(&mut tx, r, &facts).await?, true),
        };
        let (kernel, initrd) = r.boot.clone().unzip();
        sqlx::query(
            "INSERT INTO image_copies (image_id, host_id, pool, volume, kernel, initrd, state, bytes_done, bytes_total)
             VALUES ($1, $2, $3, $4, $5, $6, 'ready', coalesce($7, 0), $7)",
        )
        .bind(id)
        .bind(r.host)
        .bind(&r.pool)
        .bind(&r.volume)
        .bind(kernel)
        .bind(initrd)
        .bind(facts.size)
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            &Origin::of(req),
            Event::new(
                if new_image {
                    "image.register"
                } else {
                    "image.copy.register"
                },
                "image",
                id,
            )
            .after(json!({
                "name": r.name, "host": r.host, "pool": r.pool, "volume": r.volume,
                "format": facts.format.as_str(), "size_bytes": facts.size,
                "virtual_size_bytes": facts.virtual_size, "sha256": facts.sha256,
                "login_user": r.login_user,
            })),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn insert_image(&self, tx: &mut db::Tx, r: &Registration, facts: &Facts) -> Result<Uuid> {
        sqlx::query_scalar(
            "INSERT INTO images (name, format, size_bytes, virtual_size_bytes, sha256, login_user)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&r.name)
        .bind(facts.format.as_str())
        .bind(facts.size)
        .bind(facts.virtual_size)
        .bind(&facts.sha256)
        .bind(&r.login_user)
        .fetch_one(&mut **tx)
        .await
        .map_err(Error::from)
    }

    /// Removes uploads that made no progress for `idle` (the browser was closed and nobody
    /// resumed or discarded them): their volumes go from the host and their rows from the
    /// library, audited. A host that cannot be reached keeps its upload until the next round.
    pub async fn reap_abandoned_uploads(
        &self,
        now: OffsetDateTime,
        idle: time::Duration,
    ) -> Result<usize> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let stale: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT image_id, host_id FROM image_copies
             WHERE state = 'uploading' AND updated_at < $1 ORDER BY updated_at",
        )
        .bind(now - idle)
        .fetch_all(&mut *tx)
        .await?;
        db::done(tx);
        let why = format!("no upload progress for {} hours", idle.whole_hours());
        let mut reaped = 0;
        for (image, host) in stale {
            match self
                .drop_copy(
                    &Origin::default(),
                    image,
                    host,
                    "image.copy.abandon",
                    Some(&why),
                )
                .await
            {
                Ok(()) => reaped += 1,
                Err(e) => tracing::warn!(%image, %host, error = %e, "abandoned upload kept"),
            }
        }
        Ok(reaped)
    }

    async fn copy_row(&self, image: Uuid, host: Uuid) -> Result<CopyRow> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        Ok(sqlx::query_as(COPY_SELECT)
            .bind(image)
            .bind(host)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| AppError::NotFound("Image copy".into()))?)
    }

    /// Removes a copy's row and the volumes the portal made for it; the image goes too when
    /// nothing else holds or uses it.
    async fn drop_copy(
        &self,
        origin: &Origin,
        image: Uuid,
        host: Uuid,
        action: &str,
        why: Option<&str>,
    ) -> Result<()> {
        let copy = self.copy_row(image, host).await?;
        let names: Vec<String> = [Some(copy.volume.clone()), copy.kernel, copy.initrd]
            .into_iter()
            .flatten()
            .collect();
        let pool = copy.pool.clone();
        self.hypervisors
            .call(host, move |conn| {
                for name in &names {
                    match storage::delete_volume(conn, &pool, name) {
                        Ok(()) => {}
                        // Already gone is what we want.
                        Err(e)
                            if e.code()
                                == virt::enumutil::Enum::Known(
                                    virt::error::ErrorNumber::NoStorageVolume,
                                ) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| {
                AppError::Conflict(format!("The host could not remove the volume: {e}"))
            })?;
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        sqlx::query("DELETE FROM image_copies WHERE image_id = $1 AND host_id = $2")
            .bind(image)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        let image_gone = sqlx::query(
            "DELETE FROM images i WHERE i.id = $1
               AND NOT EXISTS (SELECT 1 FROM image_copies c WHERE c.image_id = i.id)
               AND NOT EXISTS (SELECT 1 FROM templates t WHERE t.image_id = i.id)",
        )
        .bind(image)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        audit::record(
            &mut tx,
            origin,
            Event::new(action, "image", image).before(json!({
                "host": host, "pool": copy.pool, "volume": copy.volume, "state": copy.state,
                "bytes_done": copy.bytes_done, "why": why, "image_removed": image_gone,
            })),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Images for ImagesBackend {
    async fn images(&self, req: &RequestCtx) -> Result<Vec<Image>, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let rows: Vec<ImageRow> = sqlx::query_as(
                "SELECT i.id, i.name, i.format, i.size_bytes, i.virtual_size_bytes, i.sha256, i.login_user, i.created_at,
                        coalesce((SELECT jsonb_agg(jsonb_build_object(
                                    'host_id', c.host_id, 'host_name', h.name, 'pool', c.pool, 'volume', c.volume,
                                    'kernel', c.kernel, 'initrd', c.initrd, 'state', c.state,
                                    'bytes_done', c.bytes_done, 'bytes_total', c.bytes_total, 'error', c.error) ORDER BY h.name)
                                  FROM image_copies c JOIN hosts h ON h.id = c.host_id WHERE c.image_id = i.id), '[]') AS copies,
                        coalesce((SELECT array_agg(t.name ORDER BY t.name) FROM templates t WHERE t.image_id = i.id), '{}') AS templates
                 FROM images i ORDER BY lower(i.name)",
            )
            .fetch_all(&mut *tx)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| Image {
                    id: r.id,
                    name: r.name,
                    format: r.format,
                    size_bytes: r.size_bytes,
                    virtual_size_bytes: r.virtual_size_bytes,
                    sha256: r.sha256,
                    login_user: r.login_user,
                    created_at: r.created_at,
                    copies: serde_json::from_value::<Vec<ImageCopy>>(r.copies).unwrap_or_default(),
                    templates: r.templates,
                })
                .collect())
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn register(&self, req: &RequestCtx, form: RegisterImageForm) -> Result<Uuid, AppError> {
        req.fleet_admin()?;
        let r = Registration::try_from(&form)?;
        if let Some((_, name)) = self.known_volume(&r).await? {
            return Err(AppError::field(
                "volume",
                format!("That volume is already the image \u{201c}{name}\u{201d}."),
            ));
        }
        Ok(self.register_new(req, &r, None).await?)
    }

    #[tracing::instrument(skip_all)]
    async fn start_upload(
        &self,
        req: &RequestCtx,
        form: UploadForm,
    ) -> Result<UploadTarget, AppError> {
        seam(async move {
            req.fleet_admin()?;
            let name = parse_text(&form.name, "name", 80, true);
            let host = form
                .host
                .ok_or_else(|| AppError::field("host", "Choose the host to upload to."));
            let pool = storage::parse_name(&form.pool, "pool");
            // The volume is named after the file, made safe ("My disk (1).qcow2" → "My-disk--1-.qcow2").
            let safe: String = form
                .file_name
                .trim()
                .trim_start_matches('.')
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let safe = match safe.char_indices().nth(64) {
                // Keep the end, where the extension is.
                Some(_) => safe[safe.len() - 64..].to_string(),
                None => safe,
            };
            let volume = storage::parse_name(&safe, "file");
            let size = form
                .size
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| (512..=MAX_UPLOAD_BYTES).contains(s))
                .ok_or_else(|| {
                    AppError::field("file", "Choose an image file from 512 bytes to 256 GiB.")
                });
            let login_user = parse_login_user(&form.login_user, "login_user");
            let (name, host, pool, volume, size, login_user) =
                (name, host, pool, volume, size, login_user).all_valid()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            // Format and facts are placeholders until the bytes are read back at the finish;
            // placement never sees an image without a ready copy.
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO images (name, format, login_user) VALUES ($1, 'raw', $2) RETURNING id",
            )
            .bind(&name)
            .bind(&login_user)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO image_copies (image_id, host_id, pool, volume, state, bytes_done, bytes_total)
                 VALUES ($1, $2, $3, $4, 'uploading', 0, $5)",
            )
            .bind(id)
            .bind(host)
            .bind(&pool)
            .bind(&volume)
            .bind(size as i64)
            .execute(&mut *tx)
            .await?;
            // The empty volume, sized for the whole file, before the row commits: a failure here
            // leaves nothing behind.
            let (p, v) = (pool.clone(), volume.clone());
            self.hypervisors
                .call(host, move |conn| {
                    let sp = match pool_named(conn, &p) {
                        Ok(sp) => sp,
                        Err(e) => return Ok(Err(e)),
                    };
                    if sp.lookup_storage_vol_by_name(&v).is_ok() {
                        return Ok(Err(AppError::field(
                            "file",
                            "The pool already holds a volume of that name: rename the file, or register that volume instead.",
                        )));
                    }
                    if sp.info()?.available < size {
                        return Ok(Err(AppError::field(
                            "file",
                            "The pool does not have that much free space.",
                        )));
                    }
                    storage::create_volume(conn, &p, &v, size, storage::Format::Raw)?;
                    Ok(Ok(()))
                })
                .await
                .map_err(|e| AppError::field("host", format!("The host cannot take it: {e}")))??;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("image.upload.start", "image", id).after(json!({
                    "name": name, "host": host, "pool": pool, "volume": volume, "bytes": size,
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(UploadTarget {
                image_id: id,
                host_id: host,
                offset: 0,
                total: size as i64,
            })
    }).await
    }

    async fn resume_upload(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
    ) -> Result<UploadTarget, AppError> {
        req.fleet_admin()?;
        let copy = self.copy_row(image, host).await?;
        if copy.state != "uploading" {
            return Err(AppError::Conflict(
                "This copy is not being uploaded.".into(),
            ));
        }
        Ok(UploadTarget {
            image_id: image,
            host_id: host,
            offset: copy.bytes_done,
            total: copy.bytes_total.unwrap_or_default(),
        })
    }

    async fn upload_chunk(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
        offset: i64,
        bytes: Vec<u8>,
    ) -> Result<i64, AppError> {
        seam(async move {
            req.fleet_admin()?;
            if bytes.is_empty() || bytes.len() as u64 > UPLOAD_CHUNK_BYTES {
                return Err(AppError::field(
                    "file",
                    format!("Send the file in chunks of 1 byte to {UPLOAD_CHUNK_BYTES} bytes."),
                ).into());
            }
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            // The row lock orders chunks: one writes at a time, each where the last ended.
            let copy: CopyRow = sqlx::query_as(&format!("{COPY_SELECT} FOR UPDATE"))
                .bind(image)
                .bind(host)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| AppError::NotFound("Image upload".into()))?;
            if copy.state != "uploading" {
                return Err(AppError::Conflict(
                    "This copy is not being uploaded.".into(),
                ).into());
            }
            if offset != copy.bytes_done {
                return Err(AppError::Conflict(format!(
                    "The upload stands at byte {}: resume from there.",
                    copy.bytes_done
                )).into());
            }
            let end = offset + bytes.len() as i64;
            if end > copy.bytes_total.unwrap_or_default() {
                return Err(AppError::field(
                    "file",
                    "That is more than the file's announced size.",
                ).into());
            }
            let (pool, volume) = (copy.pool.clone(), copy.volume.clone());
            self.hypervisors
                .call(host, move |conn| {
                    let vol = conn
                        .lookup_storage_pool_by_name(&pool)?
                        .lookup_storage_vol_by_name(&volume)?;
                    let stream = virt::stream::Stream::new(conn, 0)?;
                    vol.upload(&stream, offset as u64, bytes.len() as u64, 0)?;
                    let mut sent = 0;
                    while sent < bytes.len() {
                        match stream.send(&bytes[sent..]) {
                            Ok(k) if k > 0 => sent += k as usize,
                            Ok(_) => {
                                let _ = stream.abort();
                                return Err(virt::error::Error::last_error());
                            }
                            Err(e) => {
                                let _ = stream.abort();
                                return Err(e);
                            }
                        }
                    }
                    stream.finish()
                })
                .await
                .map_err(|e| AppError::Conflict(format!("The host did not take the bytes: {e}")))?;
            sqlx::query(
                "UPDATE image_copies SET bytes_done = $3, updated_at = now() WHERE image_id = $1 AND host_id = $2",
            )
            .bind(image)
            .bind(host)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(end)
    }).await
    }

    #[tracing::instrument(skip_all)]
    async fn finish_upload(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
    ) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let copy = self.copy_row(image, host).await?;
            if copy.state != "uploading" {
                return Err(AppError::Conflict(
                    "This copy is not being uploaded.".into(),
                ).into());
            }
            if Some(copy.bytes_done) != copy.bytes_total {
                return Err(AppError::field(
                    "file",
                    format!(
                        "Only {} of {} bytes have arrived: resume the upload.",
                        copy.bytes_done,
                        copy.bytes_total.unwrap_or_default()
                    ),
                ).into());
            }
            let facts = read_image(
                &self.hypervisors,
                host,
                copy.pool.clone(),
                copy.volume.clone(),
                None,
                "file",
            )
            .await;
            let checked = facts.and_then(|f| {
                templates_take(f.format, "file")?;
                if f.size != copy.bytes_total && f.sha256.is_some() {
                    return Err(AppError::field(
                        "file",
                        "The host holds a different number of bytes than were sent.",
                    ));
                }
                Ok(f)
            });
            let facts = match checked {
                Ok(f) => f,
                Err(e) => {
                    // Nothing half-registered: the volume and its rows go.
                    let why = e.to_string();
                    self.drop_copy(
                        &Origin::of(req),
                        image,
                        host,
                        "image.upload.refuse",
                        Some(&why),
                    )
                    .await?;
                    return Err(e.into());
                }
            };
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            sqlx::query(
                "UPDATE images SET format = $2, size_bytes = $3, virtual_size_bytes = $4, sha256 = $5 WHERE id = $1",
            )
            .bind(image)
            .bind(facts.format.as_str())
            .bind(facts.size)
            .bind(facts.virtual_size)
            .bind(&facts.sha256)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE image_copies SET state = 'ready', updated_at = now() WHERE image_id = $1 AND host_id = $2",
            )
            .bind(image)
            .bind(host)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("image.upload.finish", "image", image).after(json!({
                    "host": host, "format": facts.format.as_str(), "size_bytes": facts.size,
                    "virtual_size_bytes": facts.virtual_size, "sha256": facts.sha256,
                })),
            )
            .await?;
            tx.commit().await?;
            Ok(())
    }).await
    }

    async fn discard(&self, req: &RequestCtx, image: Uuid, host: Uuid) -> Result<(), AppError> {
        req.fleet_admin()?;
        let copy = self.copy_row(image, host).await?;
        if !matches!(copy.state.as_str(), "uploading" | "failed") {
            return Err(AppError::Conflict(
                "Only an unfinished upload or a failed copy can be discarded.".into(),
            ));
        }
        Ok(self
            .drop_copy(&Origin::of(req), image, host, "image.copy.discard", None)
            .await?)
    }

    #[tracing::instrument(skip_all)]
    async fn copy(
        &self,
        req: &RequestCtx,
        image: Uuid,
        host: Uuid,
        pool: String,
    ) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let pool = storage::parse_name(&pool, "pool")?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let source: Option<(Uuid, String, Option<String>, Option<String>, Option<i64>)> =
                sqlx::query_as(
                    "SELECT c.host_id, c.volume, c.kernel, c.initrd, i.size_bytes
                     FROM image_copies c JOIN images i ON i.id = c.image_id
                     WHERE c.image_id = $1 AND c.state = 'ready' ORDER BY c.updated_at LIMIT 1",
                )
                .bind(image)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((_, volume, kernel, initrd, size)) = source else {
                return Err(AppError::Conflict(
                    "The image has no finished copy to copy from.".into(),
                ).into());
            };
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM hosts WHERE id = $1)")
                .bind(host)
                .fetch_one(&mut *tx)
                .await?;
            if !exists {
                return Err(AppError::field("host", "Choose a host of the fleet.").into());
            }
            sqlx::query(
                "INSERT INTO image_copies (image_id, host_id, pool, volume, kernel, initrd, state, bytes_done, bytes_total)
                 VALUES ($1, $2, $3, $4, $5, $6, 'copying', 0, $7)",
            )
            .bind(image)
            .bind(host)
            .bind(&pool)
            .bind(&volume)
            .bind(&kernel)
            .bind(&initrd)
            .bind(size)
            .execute(&mut *tx)
            .await?;
            jobs::enqueue(
                &mut tx,
                JobKind::ImageCopy,
                copy_key(image, host),
                json!({ "image": image, "host": host }),
                3,
            )
            .await?;
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("image.copy.start", "image", image)
                    .after(json!({ "host": host, "pool": pool, "volume": volume })),
            )
            .await?;
            tx.commit().await?;
            self.queue.wake.notify_waiters();
            Ok(())
    }).await
    }

    async fn delete(&self, req: &RequestCtx, image: Uuid) -> Result<(), AppError> {
        seam(async move {
            req.fleet_admin()?;
            let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
            let name: Option<String> =
                sqlx::query_scalar("DELETE FROM images WHERE id = $1 RETURNING name")
                    .bind(image)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(name) = name else {
                return Err(AppError::NotFound("Image".into()).into());
            };
            audit::record(
                &mut tx,
                &Origin::of(req),
                Event::new("image.delete", "image", image).before(json!({ "name": name })),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
