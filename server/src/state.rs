//! Everything the HTTP layer and the workers share.
use crate::accounts::password::Hasher;
use crate::accounts::{throttle, AccountsBackend};
use crate::audit::AuditBackend;
use crate::clock::Clock;
use crate::config::Config;
use crate::hypervisor::Hypervisors;
use crate::tenants::TenantsBackend;
use app::seam::Backend;
use leptos::config::LeptosOptions;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
    pub backend: Backend,
    pub accounts: AccountsBackend,
    pub leptos: LeptosOptions,
    pub public_origin: String,
    pub hypervisors: Arc<Hypervisors>,
}

impl AppState {
    pub fn new(config: Config, pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        let accounts = AccountsBackend {
            pool: pool.clone(),
            clock: clock.clone(),
            hasher: Hasher::new(config.password_concurrency),
            limits: throttle::Limits {
                per_account: config.login_failures_per_account,
                per_address: config.login_failures_per_address,
            },
            cache: Arc::new(Default::default()),
        };
        let hypervisors = Hypervisors::new(
            pool.clone(),
            std::time::Duration::from_secs(config.reconcile_seconds.max(1)),
        );
        let backend = Backend {
            accounts: Arc::new(accounts.clone()),
            tenants: Arc::new(TenantsBackend {
                pool: pool.clone(),
                accounts: accounts.clone(),
            }),
            audit: Arc::new(AuditBackend { pool: pool.clone() }),
            fleet: Arc::new(crate::fleet::FleetBackend {
                pool: pool.clone(),
                hypervisors: hypervisors.clone(),
                accounts: accounts.clone(),
                shutdown_timeout: std::time::Duration::from_secs(config.shutdown_timeout_seconds),
            }),
        };
        let leptos = LeptosOptions::builder()
            .output_name("concierge")
            .site_root(config.site_root.clone())
            .site_pkg_dir("pkg")
            .site_addr(config.listen)
            .build();
        AppState {
            public_origin: config.public_origin(),
            config: Arc::new(config),
            pool,
            clock,
            backend,
            accounts,
            leptos,
            hypervisors,
        }
    }
}
