//! The image library against a real libvirtd: a browser-style upload in chunks that is cut
//! off and resumed, the bytes read back (format, sizes, SHA-256), a raw file claiming to be
//! qcow2, a discarded upload and one abandoned for a day leaving nothing behind, and a copy to
//! a second host that placement then uses. Opt-in like `libvirtd` (same switch, same daemon,
//! one at a time).
use crate::common::*;
use crate::libvirtd::{
    ensure_pool, on_libvirt, register_local_host, tag, wait_host, wait_until, Leftovers,
    ONE_AT_A_TIME, POOL,
};
use app::error::AppError;
use app::fleet::HostSummary;
use app::images::{Image, UploadTarget};
use app::provisioning::Template;
use concierge::hypervisor::storage;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The second "host": the same daemon through an explicit socket, with a pool of its own.
pub(crate) const SECOND_URI: &str = "qemu:///system?socket=/run/libvirt/libvirt-sock";
pub(crate) const SECOND_POOL: &str = "concierge-test-b";
pub(crate) const SECOND_POOL_DIR: &str = "/var/lib/libvirt/concierge-test-b";
const CHUNK: usize = app::images::UPLOAD_CHUNK_BYTES as usize;

/// What the upload endpoint (not a server function, so no DTO) answers for a chunk it took:
/// `{"bytes_done": N}` (`web.rs`, `upload_chunk`).
#[derive(Debug, Deserialize)]
struct Uploaded {
    bytes_done: u64,
}

/// PUTs one chunk the way `public/images.js` does: the bytes stored so far, or the status and
/// the error the endpoint answered (read like `Client::call` reads a server function's).
async fn put_chunk(
    c: &Client,
    target: &UploadTarget,
    offset: usize,
    bytes: &[u8],
) -> CallResult<Uploaded> {
    let res = c
        .http
        .put(format!(
            "{}/images/{}/{}/upload?offset={offset}",
            c.base, target.image_id, target.host_id
        ))
        .header("Origin", ORIGIN)
        .header("Sec-Fetch-Site", "same-origin")
        .header("Accept", "application/json")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload request");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    if status == 200 {
        Ok(serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the upload answered {body}, not bytes_done: {e}")))
    } else {
        let err = serde_json::from_str::<AppError>(&body)
            .unwrap_or_else(|_| AppError::Transport(format!("{status}: {body}")));
        Err((status, err))
    }
}

async fn images(c: &Client) -> Vec<Image> {
    c.call_as("list_images", &[]).await.expect("list_images")
}

async fn image_named(c: &Client, name: &str) -> Option<Image> {
    images(c).await.into_iter().find(|i| i.name == name)
}

fn volume_exists(conn: &virt::connect::Connect, pool: &str, name: &str) -> bool {
    conn.lookup_storage_pool_by_name(pool)
        .and_then(|p| {
            let _ = p.refresh(0);
            p.lookup_storage_vol_by_name(name)
        })
        .is_ok()
}

async fn start(admin: &Client, name: &str, host: &str, file: &str, size: usize) -> UploadTarget {
    admin
        .call_as(
            "start_image_upload",
            &[
                ("name", name),
                ("host", host),
                ("pool", POOL),
                ("file_name", file),
                ("size", &size.to_string()),
                ("login_user", "debian"),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("start_image_upload {file}: {e:?}"))
}

#[tokio::test]
async fn images_upload_in_chunks_resume_refuse_fakes_and_copy_between_hosts() {
    if !crate::libvirtd::enabled(
        "images_upload_in_chunks_resume_refuse_fakes_and_copy_between_hosts",
    ) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let t = tag();
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let tenant = app.tenant("Acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((tenant, "requester")))
        .await;
    on_libvirt(|c| {
        ensure_pool(c);
        if c.lookup_storage_pool_by_name(SECOND_POOL).is_err() {
            storage::create_dir_pool(c, SECOND_POOL, SECOND_POOL_DIR).expect("second pool");
        }
    })
    .await;
    let host = register_local_host(&admin).await;
    let second = admin
        .call_as::<HostSummary>(
            "register_host",
            &[
                ("name", "second"),
                ("uri", SECOND_URI),
                ("schedulable", "true"),
            ],
        )
        .await
        .expect("register the second host")
        .id
        .to_string();
    wait_host(&admin, &host, "connected", 20).await;
    wait_host(&admin, &second, "connected", 20).await;

    // A real qcow2 of about 20 MiB (three chunks): random data converted by qemu-img.
    let dir = std::env::temp_dir().join(format!("concierge-images-{t}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut raw = vec![0u8; 20 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
    std::fs::write(dir.join("data.raw"), &raw).unwrap();
    let ok = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(dir.join("data.raw"))
        .arg(dir.join("disk.qcow2"))
        .status()
        .expect("qemu-img runs")
        .success();
    assert!(ok, "qemu-img convert");
    let file = std::fs::read(dir.join("disk.qcow2")).unwrap();
    assert!(file.len() > 2 * CHUNK, "three chunks at least");
    let sha = format!("{:x}", Sha256::digest(&file));
    let volume = format!("cci{t}.qcow2");
    leftovers.volumes.push(volume.clone());

    // Only fleet admins upload.
    let r = ann
        .call(
            "start_image_upload",
            &[
                ("name", "Mine"),
                ("host", &host),
                ("pool", POOL),
                ("file_name", "x.qcow2"),
                ("size", "1024"),
            ],
        )
        .await;
    assert_refused(&r, "a requester starting an upload");

    let name = format!("Disk {t}");
    let target = start(&admin, &name, &host, &volume, file.len()).await;
    let target_image = target.image_id.to_string();
    assert_eq!(target.offset, 0);
    let r = put_chunk(&admin, &target, 0, &file[..CHUNK]).await;
    assert!(
        matches!(&r, Ok(u) if u.bytes_done == CHUNK as u64),
        "the first chunk: {r:?}"
    );
    // A requester cannot write into it; a chunk at the wrong offset is told where to go on.
    let r = put_chunk(&ann, &target, CHUNK, &file[CHUNK..2 * CHUNK]).await;
    assert!(matches!(r, Err((403, _))), "a requester's chunk: {r:?}");
    let r = put_chunk(&admin, &target, 0, &file[..CHUNK]).await;
    assert!(
        matches!(&r, Err((409, AppError::Conflict(m))) if m.contains(&format!("byte {CHUNK}"))),
        "a repeated chunk: {r:?}"
    );
    // The connection "drops" here: the upload waits, not usable, and cannot be finished yet.
    let r = admin
        .call(
            "finish_image_upload",
            &[("image", &target_image), ("host", &host)],
        )
        .await;
    assert!(
        assert_field_error(&r, "file").contains("resume"),
        "finishing half an upload"
    );
    let listed = image_named(&admin, &name)
        .await
        .expect("listed while uploading");
    assert_eq!(listed.copies[0].state, "uploading");
    assert_eq!(listed.copies[0].bytes_done, CHUNK as i64);
    // Resumed from where the server says it stands.
    let resumed: UploadTarget = admin
        .call_as(
            "resume_image_upload",
            &[("image", &target_image), ("host", &host)],
        )
        .await
        .expect("resume");
    let mut at = resumed.offset as usize;
    assert_eq!(at, CHUNK);
    while at < file.len() {
        let end = (at + CHUNK).min(file.len());
        let r = put_chunk(&admin, &target, at, &file[at..end]).await;
        at = r.expect("the next chunk").bytes_done as usize;
    }
    admin
        .call(
            "finish_image_upload",
            &[("image", &target_image), ("host", &host)],
        )
        .await
        .expect("finish");
    let image = image_named(&admin, &name).await.expect("the image");
    assert_eq!(image.format, "qcow2");
    assert_eq!(image.size_bytes, Some(file.len() as i64));
    assert_eq!(image.virtual_size_bytes, Some(20i64 << 20));
    assert_eq!(
        image.sha256.as_deref(),
        Some(sha.as_str()),
        "what the host holds is what was sent"
    );
    assert_eq!(image.login_user.as_deref(), Some("debian"));
    assert_eq!(image.copies[0].state, "ready");
    let image_id = image.id.to_string();

    // A raw file that starts like qcow2: refused at the finish, and nothing stays.
    let mut fake = vec![0u8; 1 << 20];
    fake[..4].copy_from_slice(b"QFI\xfb");
    fake[4..8].copy_from_slice(&3u32.to_be_bytes());
    let fake_volume = format!("cci{t}-fake.qcow2");
    leftovers.volumes.push(fake_volume.clone());
    let target = start(
        &admin,
        &format!("Fake {t}"),
        &host,
        &fake_volume,
        fake.len(),
    )
    .await;
    let r = put_chunk(&admin, &target, 0, &fake).await;
    assert!(r.is_ok(), "{r:?}");
    let r = admin
        .call(
            "finish_image_upload",
            &[("image", &target.image_id.to_string()), ("host", &host)],
        )
        .await;
    let message = assert_field_error(&r, "file");
    assert!(message.contains("claiming to be qcow2"), "{message}");
    assert!(image_named(&admin, &format!("Fake {t}")).await.is_none());
    let v = fake_volume.clone();
    assert!(
        !on_libvirt(move |c| volume_exists(c, POOL, &v)).await,
        "the fake's volume is gone"
    );

    // An upload given up halfway: discarded whole.
    let cut_volume = format!("cci{t}-cut.qcow2");
    leftovers.volumes.push(cut_volume.clone());
    let target = start(&admin, &format!("Cut {t}"), &host, &cut_volume, file.len()).await;
    let _ = put_chunk(&admin, &target, 0, &file[..CHUNK]).await;
    admin
        .call(
            "discard_image_copy",
            &[("image", &target.image_id.to_string()), ("host", &host)],
        )
        .await
        .expect("discard");
    assert!(image_named(&admin, &format!("Cut {t}")).await.is_none());
    let v = cut_volume.clone();
    assert!(
        !on_libvirt(move |c| volume_exists(c, POOL, &v)).await,
        "the cut upload's volume is gone"
    );
    // An upload nobody comes back to: after the idle time the housekeeping removes it, volume
    // and row, and says so in the audit log; a fresh one is left alone.
    let gone_volume = format!("cci{t}-gone.qcow2");
    leftovers.volumes.push(gone_volume.clone());
    let gone = start(
        &admin,
        &format!("Gone {t}"),
        &host,
        &gone_volume,
        file.len(),
    )
    .await;
    let _ = put_chunk(&admin, &gone, 0, &file[..CHUNK]).await;
    let fresh_volume = format!("cci{t}-fresh.qcow2");
    leftovers.volumes.push(fresh_volume.clone());
    let fresh = start(
        &admin,
        &format!("Fresh {t}"),
        &host,
        &fresh_volume,
        file.len(),
    )
    .await;
    sqlx::query(
        "UPDATE image_copies SET updated_at = now() - interval '25 hours' WHERE image_id = $1",
    )
    .bind(gone.image_id)
    .execute(&app.db)
    .await
    .unwrap();
    let reaped = app
        .state
        .images
        .reap_abandoned_uploads(time::OffsetDateTime::now_utc(), time::Duration::hours(24))
        .await
        .expect("reap");
    assert_eq!(reaped, 1);
    assert!(image_named(&admin, &format!("Gone {t}")).await.is_none());
    assert!(image_named(&admin, &format!("Fresh {t}")).await.is_some());
    let v = gone_volume.clone();
    assert!(
        !on_libvirt(move |c| volume_exists(c, POOL, &v)).await,
        "the abandoned upload's volume is gone"
    );
    assert!(app
        .audit_actions()
        .await
        .contains(&"image.copy.abandon".to_string()));
    admin
        .call(
            "discard_image_copy",
            &[("image", &fresh.image_id.to_string()), ("host", &host)],
        )
        .await
        .expect("discard the fresh one");

    // Bad input names its field and changes nothing.
    let before = app.snapshot().await;
    for (fields, field) in [
        (
            vec![
                ("name", ""),
                ("host", host.as_str()),
                ("pool", POOL),
                ("file_name", "a.qcow2"),
                ("size", "4096"),
            ],
            "name",
        ),
        (
            vec![
                ("name", "x"),
                ("host", host.as_str()),
                ("pool", POOL),
                ("file_name", ""),
                ("size", "4096"),
            ],
            "file",
        ),
        (
            vec![
                ("name", "x"),
                ("host", host.as_str()),
                ("pool", POOL),
                ("file_name", "a.qcow2"),
                ("size", "-1"),
            ],
            "file",
        ),
        (
            vec![
                ("name", "x"),
                ("host", host.as_str()),
                ("pool", "no such pool"),
                ("file_name", "a.qcow2"),
                ("size", "4096"),
            ],
            "pool",
        ),
        (
            vec![
                ("name", "x"),
                ("host", host.as_str()),
                ("pool", POOL),
                ("file_name", "a.qcow2"),
                ("size", "4096"),
                ("login_user", "root"),
            ],
            "login_user",
        ),
        (
            vec![
                ("name", name.as_str()),
                ("host", host.as_str()),
                ("pool", POOL),
                ("file_name", "b.qcow2"),
                ("size", "4096"),
            ],
            "name",
        ),
    ] {
        let r = admin.call("start_image_upload", &fields).await;
        assert_field_error(&r, field);
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "refused uploads change nothing"
    );

    // Copied to the second host, checked against the image's SHA-256, then usable there.
    admin
        .call(
            "copy_image",
            &[
                ("image", &image_id),
                ("host", &second),
                ("pool", SECOND_POOL),
            ],
        )
        .await
        .expect("copy_image");
    let started = Instant::now();
    let copied = wait_until!(120, "the copy on the second host", {
        let i = image_named(&admin, &name).await.unwrap();
        let copy = i
            .copies
            .into_iter()
            .find(|c| c.host_id.to_string() == second)
            .unwrap();
        assert_ne!(copy.state, "failed", "{copy:?}");
        (copy.state == "ready").then_some(copy)
    });
    eprintln!(
        "measure: copy of {} bytes: {} ms",
        file.len(),
        started.elapsed().as_millis()
    );
    assert_eq!(copied.bytes_done, file.len() as i64);
    let on_second = std::fs::read(std::path::Path::new(SECOND_POOL_DIR).join(&volume)).unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&on_second)), sha);

    // A template points at the image; it is ready on both hosts; the image cannot be forgotten.
    let template: Uuid = admin
        .call_as(
            "save_template",
            &[
                ("name", &format!("From library {t}")),
                ("os", "test"),
                ("sizes", "tiny 1 0.25 1"),
                ("default_lease_days", "1"),
                ("max_lease_days", "1"),
                ("tenants", "*"),
                ("image_id", &image_id),
            ],
        )
        .await
        .expect("a template from the library");
    let listed: Vec<Template> = admin.call_as("list_templates", &[]).await.unwrap();
    let tpl = listed.iter().find(|x| x.id == template).unwrap();
    assert_eq!(tpl.image_id, Some(image.id));
    assert_eq!(
        tpl.login_user.as_deref(),
        Some("debian"),
        "the image's login user"
    );
    assert_eq!(tpl.images.len(), 2, "ready on both hosts");
    let r = admin.call("delete_image", &[("image", &image_id)]).await;
    assert!(matches!(r, Err((409, _))), "an image in use stays: {r:?}");

    let actions = app.audit_actions().await;
    for a in [
        "image.upload.start",
        "image.upload.finish",
        "image.upload.refuse",
        "image.copy.discard",
        "image.copy.start",
        "image.copy.finish",
    ] {
        assert!(actions.iter().any(|x| x == a), "audit {a}: {actions:?}");
    }
    let v = volume.clone();
    on_libvirt(move |c| {
        let _ = storage::delete_volume(c, SECOND_POOL, &v);
    })
    .await;
    drop(leftovers);
    let _ = std::fs::remove_dir_all(dir);
}
