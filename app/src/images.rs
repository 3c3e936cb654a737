//! The image library: base images fleet admins register, upload or copy between hosts, and
//! templates point at.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Bytes one upload request carries at most (the browser sends the file in such chunks, so an
/// interrupted upload resumes at the last whole chunk).
pub const UPLOAD_CHUNK_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: Uuid,
    pub name: String,
    /// qcow2 or raw: detected at import from the bytes, then pinned.
    pub format: String,
    pub size_bytes: Option<i64>,
    pub virtual_size_bytes: Option<i64>,
    pub sha256: Option<String>,
    /// Set when the image takes cloud-init: the user the owner's keys log in as.
    pub login_user: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub copies: Vec<ImageCopy>,
    /// Names of the templates that use it (an image in use cannot be deleted).
    pub templates: Vec<String>,
}

impl Image {
    /// Hosts where placement may use it.
    pub fn ready_hosts(&self) -> usize {
        self.copies.iter().filter(|c| c.state == "ready").count()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCopy {
    pub host_id: Uuid,
    pub host_name: String,
    pub pool: String,
    pub volume: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// uploading, copying, ready or failed.
    pub state: String,
    pub bytes_done: i64,
    pub bytes_total: Option<i64>,
    pub error: Option<String>,
}

impl ImageCopy {
    pub fn percent(&self) -> Option<i64> {
        self.bytes_total
            .filter(|t| *t > 0)
            .map(|t| (self.bytes_done * 100 / t).clamp(0, 100))
    }
}

/// Registering a volume a host's pool already holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterImageForm {
    pub name: String,
    pub host: Option<Uuid>,
    pub pool: String,
    pub volume: String,
    pub kernel: String,
    pub initrd: String,
    pub login_user: String,
}

/// Starting a browser upload: the file's name and size as the browser reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadForm {
    pub name: String,
    pub host: Option<Uuid>,
    pub pool: String,
    pub file_name: String,
    pub size: String,
    pub login_user: String,
}

/// Where the browser sends the bytes, and from which offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadTarget {
    pub image_id: Uuid,
    pub host_id: Uuid,
    pub offset: i64,
    pub total: i64,
}

impl UploadTarget {
    pub fn url(&self) -> String {
        format!("/images/{}/{}/upload", self.image_id, self.host_id)
    }
}

/// Bytes in a short human form (binary units).
pub fn bytes_text(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[server(prefix = "/api", endpoint = "list_images")]
pub async fn list_images() -> Result<Vec<Image>, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.images.images(&req).await)
}

#[allow(clippy::too_many_arguments)]
#[server(prefix = "/api", endpoint = "register_image")]
pub async fn register_image(
    name: String,
    #[server(default)] host: String,
    #[server(default)] pool: String,
    #[server(default)] volume: String,
    #[server(default)] kernel: String,
    #[server(default)] initrd: String,
    #[server(default)] login_user: String,
) -> Result<Uuid, AppError> {
    let req = crate::seam::request()?;
    let form = RegisterImageForm {
        name,
        host: Uuid::parse_str(host.trim()).ok(),
        pool,
        volume,
        kernel,
        initrd,
        login_user,
    };
    crate::seam::reply(crate::seam::backend()?.images.register(&req, form).await)
}

#[server(prefix = "/api", endpoint = "start_image_upload")]
pub async fn start_image_upload(
    name: String,
    #[server(default)] host: String,
    #[server(default)] pool: String,
    #[server(default)] file_name: String,
    #[server(default)] size: String,
    #[server(default)] login_user: String,
) -> Result<UploadTarget, AppError> {
    let req = crate::seam::request()?;
    let form = UploadForm {
        name,
        host: Uuid::parse_str(host.trim()).ok(),
        pool,
        file_name,
        size,
        login_user,
    };
    crate::seam::reply(
        crate::seam::backend()?
            .images
            .start_upload(&req, form)
            .await,
    )
}

/// Where an interrupted upload stands, to resume it.
#[server(prefix = "/api", endpoint = "resume_image_upload")]
pub async fn resume_image_upload(image: Uuid, host: Uuid) -> Result<UploadTarget, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .images
            .resume_upload(&req, image, host)
            .await,
    )
}

/// All bytes are there: inspect the volume, record its facts and make it usable.
#[server(prefix = "/api", endpoint = "finish_image_upload")]
pub async fn finish_image_upload(image: Uuid, host: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .images
            .finish_upload(&req, image, host)
            .await,
    )
}

/// Drops an unfinished or failed copy: its volume and its row (and the image, if it was the
/// image's only copy and no template uses it).
#[server(prefix = "/api", endpoint = "discard_image_copy")]
pub async fn discard_image_copy(image: Uuid, host: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .images
            .discard(&req, image, host)
            .await,
    )
}

/// Copies a ready image (disk, and kernel and initramfs) to another host's pool, in the
/// background.
#[server(prefix = "/api", endpoint = "copy_image")]
pub async fn copy_image(
    image: Uuid,
    #[server(default)] host: String,
    #[server(default)] pool: String,
) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    let host = Uuid::parse_str(host.trim())
        .map_err(|_| AppError::field("host", "Choose the host to copy the image to."))?;
    crate::seam::reply(
        crate::seam::backend()?
            .images
            .copy(&req, image, host, pool)
            .await,
    )
}

/// Forgets an image no template uses; its volumes stay on the hosts.
#[server(prefix = "/api", endpoint = "delete_image")]
pub async fn delete_image(image: Uuid) -> Result<(), AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(crate::seam::backend()?.images.delete(&req, image).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(300 << 20), "300.0 MiB");
    }
}
