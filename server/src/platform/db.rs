//! PostgreSQL: migrations as the owner, requests as `concierge_app` inside transactions that
//! carry the actor's scope for row-level security.
use crate::platform::error::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool, Postgres, Transaction};
use std::str::FromStr;
use uuid::Uuid;

/// The unprivileged role every request runs as.
pub const RUNTIME_ROLE: &str = "concierge_app";

pub type Tx = Transaction<'static, Postgres>;

/// Creates the runtime role if needed, migrates, and returns the request pool.
#[tracing::instrument(skip_all)]
/// Migrates and opens the request pool of replica `replica`. Its connections carry the
/// replica's id as their `application_name`, so the others can end them once it is gone
/// (`cluster::fence_gone`).
pub async fn prepare(
    database_url: &str,
    max_connections: u32,
    replica: uuid::Uuid,
) -> anyhow::Result<PgPool> {
    let options = loopback_in_clear(database_url, PgConnectOptions::from_str(database_url)?)
        .application_name(&crate::platform::cluster::application_name(replica));
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone())
        .await?;
    ensure_runtime_role(&owner).await?;
    sqlx::migrate!("../migrations").run(&owner).await?;
    // The session store's own table, which the runtime role must be able to use.
    let store = tower_sessions_sqlx_store::PostgresStore::new(owner.clone());
    store.migrate().await?;
    owner
        .execute(
            "GRANT USAGE ON SCHEMA tower_sessions TO concierge_app;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA tower_sessions TO concierge_app;",
        )
        .await?;
    owner.close().await;

    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET ROLE concierge_app").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// sqlx negotiates TLS whenever the server offers it (`sslmode=prefer`), and Debian's
/// PostgreSQL does, even on 127.0.0.1, where encryption protects nothing and costs both sides
/// CPU on every round trip. A URL that names its `sslmode` keeps it.
fn loopback_in_clear(url: &str, options: PgConnectOptions) -> PgConnectOptions {
    let loopback = match options.get_host() {
        "localhost" => true,
        host if host.starts_with('/') => true,
        host => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
    };
    if loopback && !url.contains("sslmode=") {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        options
    }
}

/// Roles are cluster-wide, so several databases (tests) may race to create it: retry.
async fn ensure_runtime_role(owner: &PgPool) -> anyhow::Result<()> {
    let mut last = None;
    for _ in 0..10 {
        let result = owner
            .execute(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'concierge_app') THEN
                     CREATE ROLE concierge_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
                   END IF;
                   IF NOT pg_has_role(current_user, 'concierge_app', 'MEMBER') THEN
                     EXECUTE format('GRANT concierge_app TO %I', current_user);
                   END IF;
                 END $$;",
            )
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    Err(last.expect("loop ran").into())
}

/// Whose data a transaction may see (row-level security reads these settings).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    pub user: Option<Uuid>,
    pub tenant: Option<Uuid>,
    pub fleet: bool,
}

impl Scope {
    pub fn fleet() -> Self {
        Scope {
            fleet: true,
            ..Scope::default()
        }
    }

    pub fn tenant(tenant: Uuid) -> Self {
        Scope {
            tenant: Some(tenant),
            ..Scope::default()
        }
    }
}

/// Begins a transaction scoped for row-level security.
pub async fn begin(pool: &PgPool, scope: Scope) -> Result<Tx> {
    Ok(begin_then(pool, scope, None).await?)
}

/// `begin` for a list whose filters are parameters that fold away in a custom plan, so that
/// PostgreSQL would re-plan its query on every call; the generic plan serves every filter
/// with the same indexes.
pub async fn begin_generic(pool: &PgPool, scope: Scope) -> Result<Tx> {
    begin_then(pool, scope, Some(GENERIC_PLANS))
        .await
        .map_err(Error::from)
}

const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";

/// `begin_generic`'s setting for the rest of a transaction begun otherwise.
pub async fn generic_plans(tx: &mut Tx) -> Result<()> {
    sqlx::query(GENERIC_PLANS).execute(&mut **tx).await?;
    Ok(())
}

/// Ends a transaction that only read: its ROLLBACK then travels with the pool's own check of
/// the connection on release, one round trip fewer than a COMMIT.
pub fn done(tx: Tx) {
    drop(tx);
}

async fn begin_then(
    pool: &PgPool,
    scope: Scope,
    then: Option<&'static str>,
) -> Result<Tx, sqlx::Error> {
    // BEGIN and the settings travel as one simple query, one round trip instead of two (every
    // page makes several transactions). Simple queries take no parameters: the values written
    // in are UUIDs or a fixed word, which cannot carry a quote.
    let user = scope.user.map(|u| u.to_string()).unwrap_or_default();
    let tenant = scope.tenant.map(|t| t.to_string()).unwrap_or_default();
    let fleet = if scope.fleet { "on" } else { "" };
    let then = then.map(|t| format!("; {t}")).unwrap_or_default();
    pool.begin_with(format!(
        "BEGIN; SELECT set_config('app.user_id', '{user}', true), \
         set_config('app.tenant_id', '{tenant}', true), set_config('app.fleet_admin', '{fleet}', true){then}"
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> String {
        let options = loopback_in_clear(url, PgConnectOptions::from_str(url).unwrap());
        format!("{:?}", options.get_ssl_mode())
    }

    #[test]
    fn loopback_connections_skip_tls_unless_asked() {
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/x"), "Disable");
        assert_eq!(mode("postgres://postgres@localhost/x"), "Disable");
        assert_eq!(mode("postgres://postgres@[::1]:5432/x"), "Disable");
        assert_eq!(
            mode("postgres://postgres@127.0.0.1/x?sslmode=require"),
            "Require"
        );
        assert_eq!(mode("postgres://postgres@db.example.com/x"), "Prefer");
    }
}
