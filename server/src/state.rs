//! Everything the HTTP layer and the workers share.
use crate::accounts::password::Hasher;
use crate::accounts::tenants::TenantsBackend;
use crate::accounts::{throttle, AccountsBackend};
use crate::config::Config;
use crate::hypervisor::Hypervisors;
use crate::platform::audit::AuditBackend;
use crate::platform::clock::Clock;
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
    pub queue: Arc<crate::platform::jobs::Queue>,
    pub provisioner: Arc<crate::provisioning::provisioner::Provisioner>,
    pub leases: Arc<crate::provisioning::leases::Leases>,
    pub reclaimer: Arc<crate::reclamation::Reclaimer>,
    pub audit_checkpoints: Arc<crate::platform::audit::integrity::Checkpointer>,
    /// The audit trail's exports (streamed, so outside the seam's request-reply methods).
    pub audit: Arc<AuditBackend>,
    pub alerter: Arc<crate::alerts::Alerter>,
    /// The image library's backend, also for housekeeping (abandoned uploads).
    pub images: Arc<crate::catalog::images::ImagesBackend>,
    pub live: crate::platform::live::Live,
    /// This process among the replicas sharing the database.
    pub replica: Arc<crate::platform::cluster::Replica>,
    /// Told to stop: `/healthz` answers 503 while requests still are served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    pub fn new(
        config: Config,
        pool: PgPool,
        clock: Arc<dyn Clock>,
        replica: Arc<crate::platform::cluster::Replica>,
    ) -> anyhow::Result<Self> {
        let accounts = AccountsBackend {
            pool: pool.clone(),
            clock: clock.clone(),
            hasher: Hasher::new(config.password_concurrency),
            limits: throttle::Limits {
                per_account_address: config.login_failures_per_account_address,
                per_address: config.login_failures_per_address,
                slow_after: config.login_failures_per_account,
                delay_step: std::time::Duration::from_millis(100),
                max_delay: std::time::Duration::from_millis(config.login_max_delay_ms),
            },
            cache: Arc::new(Default::default()),
        };
        let hypervisors = Hypervisors::new(
            pool.clone(),
            replica.id,
            std::time::Duration::from_secs(config.reconcile_seconds.max(1)),
            (config.sample_seconds > 0)
                .then(|| std::time::Duration::from_secs(config.sample_seconds)),
        );
        let queue = Arc::new(crate::platform::jobs::Queue::default());
        let mailer = match &config.smtp_url {
            Some(url) => Some(Arc::new(crate::notifications::mail::Mailer::new(
                url,
                &config.mail_from,
                &config.public_url,
            )?)),
            None => None,
        };
        let provisioner = Arc::new(crate::provisioning::provisioner::Provisioner {
            pool: pool.clone(),
            hypervisors: hypervisors.clone(),
            clock: clock.clone(),
            vcpu_overcommit: config.vcpu_overcommit,
            placement_retry: std::time::Duration::from_secs(config.placement_retry_seconds.max(1)),
            crash_after: config.crash_after.clone(),
            ssh: crate::provisioning::provisioner::SshForwards {
                address: config.ssh_forward_address.clone(),
                ports: config.ssh_port_min..=config.ssh_port_max.max(config.ssh_port_min),
            },
            mailer,
            webhooks: Arc::new(crate::notifications::webhooks::Sender::new(
                config.webhooks_allow_private_networks,
                std::time::Duration::from_secs_f64(
                    config.webhook_retry_seconds.clamp(0.01, 3600.0),
                ),
                clock.clone(),
            )?),
        });
        let leases = Arc::new(crate::provisioning::leases::Leases {
            pool: pool.clone(),
            clock: clock.clone(),
            hypervisors: hypervisors.clone(),
            queue: queue.clone(),
            grace: time::Duration::days(config.lease_grace_days.max(0)),
        });
        let reclaimer = Arc::new(crate::reclamation::Reclaimer {
            pool: pool.clone(),
            clock: clock.clone(),
            hypervisors: hypervisors.clone(),
            queue: queue.clone(),
        });
        let alerter = Arc::new(crate::alerts::Alerter {
            pool: pool.clone(),
            clock: clock.clone(),
            vcpu_overcommit: config.vcpu_overcommit,
        });
        let live = crate::platform::live::Live::default();
        let audit_key = Arc::new(crate::platform::audit::chain::load_or_create_key(
            &config.audit_key_path(),
        )?);
        let audit = Arc::new(AuditBackend {
            pool: pool.clone(),
            key: audit_key.clone(),
            clock: clock.clone(),
        });
        let audit_checkpoints = Arc::new(crate::platform::audit::integrity::Checkpointer {
            pool: pool.clone(),
            key: audit_key.clone(),
            clock: clock.clone(),
        });
        let images = Arc::new(crate::catalog::images::ImagesBackend {
            pool: pool.clone(),
            hypervisors: hypervisors.clone(),
            queue: queue.clone(),
        });
        let backend = Backend {
            accounts: Arc::new(accounts.clone()),
            ssh_keys: Arc::new(crate::accounts::ssh_keys::SshKeysBackend { pool: pool.clone() }),
            notifications: Arc::new(crate::notifications::NotificationsBackend {
                pool: pool.clone(),
            }),
            alerts: Arc::new(crate::alerts::AlertsBackend {
                pool: pool.clone(),
                clock: clock.clone(),
            }),
            reclamation: Arc::new(crate::reclamation::ReclamationBackend {
                pool: pool.clone(),
                clock: clock.clone(),
                reclaimer: reclaimer.clone(),
            }),
            webhooks: Arc::new(crate::notifications::webhooks::WebhooksBackend {
                pool: pool.clone(),
                clock: clock.clone(),
                allow_private: config.webhooks_allow_private_networks,
            }),
            consoles: Arc::new(crate::fleet::consoles::ConsolesBackend {
                pool: pool.clone(),
                clock: clock.clone(),
            }),
            tenants: Arc::new(TenantsBackend {
                pool: pool.clone(),
                accounts: accounts.clone(),
            }),
            invitations: Arc::new(crate::accounts::invitations::InvitationsBackend {
                pool: pool.clone(),
                accounts: accounts.clone(),
            }),
            audit: audit.clone(),
            two_factor: Arc::new(crate::accounts::two_factor::TwoFactorBackend {
                accounts: accounts.clone(),
            }),
            fleet: Arc::new(crate::fleet::FleetBackend {
                pool: pool.clone(),
                hypervisors: hypervisors.clone(),
                accounts: accounts.clone(),
                shutdown_timeout: std::time::Duration::from_secs(config.shutdown_timeout_seconds),
                queue: queue.clone(),
                vcpu_overcommit: config.vcpu_overcommit,
                simulated_fleets: config.simulated_fleets_dir.clone(),
                live_generation: live.generation.clone(),
                replica: replica.id,
                domain_lists: crate::platform::list::Known::new(
                    live.generation.clone(),
                    1_000,
                    std::time::Duration::from_secs(10),
                ),
                dashboard: crate::fleet::Kept::new(std::time::Duration::from_secs(3)),
                charts: crate::metering::metrics::Range::ALL
                    .into_iter()
                    .map(|r| {
                        let ttl =
                            std::time::Duration::from_secs(config.sample_seconds.clamp(5, 60));
                        (r, crate::fleet::Kept::new(ttl))
                    })
                    .collect(),
                min_versions: (config.min_libvirt_version, config.min_qemu_version),
                clock: clock.clone(),
            }),
            catalog: Arc::new(crate::catalog::CatalogBackend {
                pool: pool.clone(),
                images: images.clone(),
            }),
            images: images.clone(),
            provisioning: Arc::new(crate::provisioning::requests::ProvisioningBackend {
                pool: pool.clone(),
                clock: clock.clone(),
                hypervisors: hypervisors.clone(),
                queue: queue.clone(),
                vcpu_overcommit: config.vcpu_overcommit,
                max_attempts: config.job_max_attempts.max(1),
                ssh_host: config.ssh_forward_address.clone(),
                sparklines: moka::future::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(std::time::Duration::from_secs(60))
                    .build(),
                vm_lists: crate::platform::list::Known::new(
                    live.generation.clone(),
                    10_000,
                    std::time::Duration::from_secs(10),
                ),
            }),
            reports: Arc::new(crate::metering::reports::ReportsBackend {
                pool: pool.clone(),
                clock: clock.clone(),
                vcpu_overcommit: config.vcpu_overcommit,
            }),
        };
        let leptos = LeptosOptions::builder()
            .output_name(bundle_name(&config.site_root))
            .site_root(config.site_root.clone())
            .site_pkg_dir("pkg")
            .site_addr(config.listen)
            .build();
        Ok(AppState {
            public_origin: config.public_origin(),
            config: Arc::new(config),
            pool,
            clock,
            backend,
            accounts,
            leptos,
            hypervisors,
            queue,
            provisioner,
            leases,
            reclaimer,
            audit_checkpoints,
            audit,
            alerter,
            images,
            live,
            replica,
            draining: Default::default(),
        })
    }
}

/// The browser bundle's file name without extension: `scripts/lib.sh` names the files after a
/// hash of their content (so they can be cached for good) and writes that name next to them.
pub fn bundle_name(site_root: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(site_root).join("pkg/concierge.name"))
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_else(|| "concierge".to_string())
}
