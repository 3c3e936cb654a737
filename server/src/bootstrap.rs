//! First start: the initial fleet admin, and (on request) a demo tenant.
use crate::accounts::email::{DisplayName, Email};
use crate::audit::Origin;
use crate::db::{self, Scope};
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
                    "INSERT INTO hosts (name, uri, simulated, labels) VALUES ($1, $2, $3, ARRAY['local']) RETURNING id",
                )
                .bind(name)
                .bind(uri)
                .bind(simulated)
                .fetch_one(&mut *tx)
                .await?;
                crate::audit::record(
                    &mut tx,
                    &Origin::default(),
                    crate::audit::Event::new("host.register", "host", id).after(
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
