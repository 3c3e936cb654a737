//! First start: the initial fleet admin, and (on request) a demo tenant.
use crate::accounts::email::{DisplayName, Email};
use crate::platform::audit::Origin;
use crate::platform::db::{self, Scope};
use crate::state::AppState;
use app::account::TenantRole;

/// Creates the first fleet admin when no user exists. Returns the one-time password when
/// one was generated (the caller prints it once).
pub async fn first_admin(state: &AppState) -> anyhow::Result<Option<String>> {
    let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
    // Serialises concurrent first starts against the same database.
    sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(&mut *tx)
        .await?;
    if any {
        return Ok(None);
    }
    let email = Email::parse(&state.config.admin_email, "admin_email")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = DisplayName::parse("Fleet Admin", "name").map_err(|e| anyhow::anyhow!("{e}"))?;
    let given = state.config.admin_password.as_deref();
    let otp = state
        .accounts
        .insert_user(
            &mut tx,
            &Origin::default(),
            None,
            &email,
            &name,
            true,
            given,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await?;
    Ok(given.is_none().then_some(otp.password))
}

/// Seeds tenant "Demo" with one account per role, password `concierge-demo`, when absent.
pub async fn demo(state: &AppState) -> anyhow::Result<()> {
    let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE lower(name) = 'demo')")
            .fetch_one(&mut *tx)
            .await?;
    if exists {
        return Ok(());
    }
    let tenant: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ('Demo') RETURNING id")
            .fetch_one(&mut *tx)
            .await?;
    for (role, who) in [
        (TenantRole::Requester, "Rita Requester"),
        (TenantRole::Approver, "Arno Approver"),
        (TenantRole::TenantAdmin, "Tara Admin"),
        (TenantRole::Manager, "Mona Manager"),
    ] {
        let email = Email::parse(
            &format!("{}@demo.local", role.as_str().replace('_', "-")),
            "email",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = DisplayName::parse(who, "name").map_err(|e| anyhow::anyhow!("{e}"))?;
        let otp = state
            .accounts
            .insert_user(
                &mut tx,
                &Origin::default(),
                Some(tenant),
                &email,
                &name,
                false,
                Some("concierge-demo"),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        sqlx::query("UPDATE users SET must_change_password = false WHERE id = $1")
            .bind(otp.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3::tenant_role)",
        )
        .bind(tenant)
        .bind(otp.user_id)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await?;
    }
    // A general rate card, so the demo's reports show costs rather than zeros.
    sqlx::query(
        "INSERT INTO rate_cards (currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from)
         SELECT 'EUR', 0.02, 0.005, 0.0002, date_trunc('year', now())
         WHERE NOT EXISTS (SELECT 1 FROM rate_cards WHERE template_id IS NULL)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Registers the local hypervisor when no host exists: libvirtd's `qemu:///system` if it
/// answers, else `qemu:///session`, else a simulated host on libvirt's test driver.
pub async fn local_host(state: &AppState) -> anyhow::Result<()> {
    let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM hosts)")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    if any {
        return Ok(());
    }
    let mut candidates = Vec::new();
    if std::path::Path::new("/var/run/libvirt/libvirt-sock").exists() {
        candidates.push(("local", "qemu:///system", false));
    }
    candidates.push(("local", "qemu:///session", false));
    candidates.push(("simulated", "test:///default", true));
    for (name, uri, simulated) in candidates {
        match crate::hypervisor::probe(uri).await {
            Ok(_) => {
                let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
                let id: uuid::Uuid = sqlx::query_scalar(
                    "INSERT INTO hosts (name, uri, simulated, labels, domain_type) VALUES ($1, $2, $3, ARRAY['local'], $4) RETURNING id",
                )
                .bind(name)
                .bind(uri)
                .bind(simulated)
                .bind(state.config.local_host_domain_type.as_deref().filter(|_| !simulated))
                .fetch_one(&mut *tx)
                .await?;
                crate::platform::audit::record(
                    &mut tx,
                    &Origin::default(),
                    crate::platform::audit::Event::new("host.register", "host", id).after(
                        serde_json::json!({ "name": name, "uri": uri, "simulated": simulated }),
                    ),
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                tx.commit().await?;
                tracing::info!(uri, "registered the local hypervisor");
                return Ok(());
            }
            Err(e) => tracing::info!(uri, error = %e, "local hypervisor candidate did not answer"),
        }
    }
    Ok(())
}

/// With `--demo`: the Debian 12 guest image `scripts/guest-image` built (`--guest-image-dir`)
/// uploaded to the local host, and a published "Debian 12" template for tenant "Demo", so a
/// first run can request a VM and log into it. Idempotent; skipped (with a log line) when
/// there is no image or the host is simulated or does not connect.
pub async fn demo_catalog(state: &AppState) -> anyhow::Result<()> {
    use crate::hypervisor::storage;
    const FILES: [(&str, storage::Format); 3] = [
        ("debian-12.qcow2", storage::Format::Qcow2),
        ("debian-12.vmlinuz", storage::Format::Raw),
        ("debian-12.initrd", storage::Format::Raw),
    ];
    let host: Option<(uuid::Uuid, String)> = {
        let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM templates WHERE lower(name) = 'debian 12')",
        )
        .fetch_one(&mut *tx)
        .await?;
        if exists {
            return Ok(());
        }
        sqlx::query_as(
            "SELECT id, uri FROM hosts ORDER BY 'local' = ANY(labels) DESC, created_at LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?
    };
    let Some((host, uri)) = host else {
        return Ok(());
    };
    let Some(dir) = state.config.guest_image_dir.clone() else {
        tracing::warn!("demo template skipped: no guest image (run scripts/guest-image and pass --guest-image-dir)");
        return Ok(());
    };
    if uri.starts_with("test:") || FILES.iter().any(|(f, _)| !dir.join(f).is_file()) {
        tracing::warn!(dir = %dir.display(), uri, "demo template skipped: it needs the guest image and a real hypervisor");
        return Ok(());
    }
    // The host actor connects in the background; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let pool_name = "concierge".to_string();
    let pool_dir = if uri.ends_with("/session") {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
        format!("{home}/.local/share/libvirt/images/concierge")
    } else {
        "/var/lib/libvirt/images/concierge".to_string()
    };
    let read = loop {
        let (p, d, dir) = (pool_name.clone(), pool_dir.clone(), dir.clone());
        let made = state
            .hypervisors
            .call(host, move |conn| {
                if conn.lookup_storage_pool_by_name(&p).is_err() {
                    storage::create_dir_pool(conn, &p, &d)?;
                }
                let pool = conn.lookup_storage_pool_by_name(&p)?;
                let _ = pool.refresh(0);
                for (file, format) in FILES {
                    if pool.lookup_storage_vol_by_name(file).is_err() {
                        let path = dir.join(file);
                        let f = std::fs::File::open(&path)
                            .map_err(|_| virt::error::Error::last_error())?;
                        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                        storage::upload_volume(conn, &p, file, format, f, len)?;
                    }
                }
                // What the library records of it: read back from the host.
                Ok(crate::hypervisor::image::read_volume(
                    conn,
                    &p,
                    FILES[0].0,
                    |_| {},
                ))
            })
            .await;
        match made {
            Ok(Ok(read)) => break read,
            Ok(Err(why)) => {
                tracing::warn!(why, "demo catalog skipped: the guest image cannot be used");
                return Ok(());
            }
            Err(e) if std::time::Instant::now() > deadline => {
                tracing::warn!(error = %e, "demo catalog skipped: the local host did not answer");
                return Ok(());
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    };
    let _ = state.hypervisors.reconcile(host).await;
    let mut tx = db::begin(&state.pool, Scope::fleet()).await?;
    let tenant: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tenants WHERE lower(name) = 'demo'")
            .fetch_optional(&mut *tx)
            .await?;
    let sizes = serde_json::json!([
        { "name": "tiny", "vcpus": 1, "memory_mib": 512, "disk_gib": 5 },
        { "name": "small", "vcpus": 1, "memory_mib": 1024, "disk_gib": 10 },
        { "name": "large", "vcpus": 2, "memory_mib": 4096, "disk_gib": 40 },
    ]);
    let id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO templates (name, description, os, sizes, default_lease_days, max_lease_days, all_tenants, tenant_ids, published, login_user)
         VALUES ('Debian 12', 'A minimal Debian 12 (bookworm) server with cloud-init, SSH and the QEMU guest agent. Log in as debian with your SSH key; sudo needs no password.', 'Debian 12',
                 $1, 7, 30, $2::uuid IS NULL, CASE WHEN $2::uuid IS NULL THEN '{}'::uuid[] ELSE ARRAY[$2::uuid] END, true, 'debian')
         RETURNING id",
    )
    .bind(&sizes)
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    let image: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO images (name, format, size_bytes, virtual_size_bytes, sha256, login_user)
         VALUES ('Debian 12 (cloud-init)', $1, $2, $3, $4, 'debian')
         ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind(read.facts.format.as_str())
    .bind(read.length as i64)
    .bind(read.facts.virtual_size as i64)
    .bind(&read.sha256)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO image_copies (image_id, host_id, pool, volume, kernel, initrd, bytes_done, bytes_total)
         VALUES ($1, $2, $3, 'debian-12.qcow2', 'debian-12.vmlinuz', 'debian-12.initrd', $4, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(image)
    .bind(host)
    .bind(&pool_name)
    .bind(read.length as i64)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE templates SET image_id = $2 WHERE id = $1")
        .bind(id)
        .bind(image)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE hosts SET schedulable = true WHERE id = $1")
        .bind(host)
        .execute(&mut *tx)
        .await?;
    crate::platform::audit::record(
        &mut tx,
        &Origin::default(),
        crate::platform::audit::Event::new("template.create", "template", id)
            .after(serde_json::json!({ "name": "Debian 12", "demo": true })),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    tx.commit().await?;
    tracing::info!("demo template published");
    Ok(())
}
