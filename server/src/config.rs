//! Command-line flags, each with an environment fallback.
use clap::Parser;
use std::net::SocketAddr;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "concierge",
    version,
    about = "Self-service virtualization manager"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "CONCIERGE_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// The URL people use to reach the portal; cross-site checks compare `Origin` with it, and
    /// an https URL turns on `Secure` `__Host-` cookies.
    #[arg(
        long,
        env = "CONCIERGE_PUBLIC_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub public_url: String,

    /// PostgreSQL connection URL of the schema owner (migrations run as this user; requests
    /// run as the unprivileged role `concierge_app`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Maximum database connections; by default four per core, at least 8. More backends
    /// than that only take turns on the same cores (16 on 2 cores served the home page
    /// ~25 % slower than 8).
    #[arg(long, env = "CONCIERGE_DB_CONNECTIONS", default_value_t = default_db_connections())]
    pub db_connections: u32,

    /// Directory holding the built site (`pkg/` with the WASM bundle and CSS).
    #[arg(long, env = "CONCIERGE_SITE_ROOT", default_value = "target/site")]
    pub site_root: String,

    /// The longest a page or other GET may take to answer before the server gives up with
    /// 503 and logs the path: a page stuck on a lock or a resource that never resolves shows
    /// an error instead of a spinner that never ends (event streams and consoles are only
    /// bounded until their first byte).
    #[arg(long, env = "CONCIERGE_PAGE_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub page_timeout_seconds: u64,

    /// Minutes without activity after which a session ends.
    #[arg(long, env = "CONCIERGE_SESSION_IDLE_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=525_600))]
    pub session_idle_minutes: i64,

    /// Hours after sign-in after which a session ends regardless of activity.
    #[arg(long, env = "CONCIERGE_SESSION_ABSOLUTE_HOURS", default_value_t = 12, value_parser = clap::value_parser!(i64).range(1..=87_600))]
    pub session_absolute_hours: i64,

    /// Failed sign-ins of one account (from anywhere) per hour after which its sign-ins are
    /// slowed down, 100 ms more per failure up to `--login-max-delay-ms`; never refused, so
    /// nobody can lock the real user out.
    #[arg(
        long,
        env = "CONCIERGE_LOGIN_FAILURES_PER_ACCOUNT",
        default_value_t = 20
    )]
    pub login_failures_per_account: i64,

    /// Failed sign-ins of one account from one client address per hour before that address
    /// is refused for that account (it unlocks as the hour rolls on).
    #[arg(
        long,
        env = "CONCIERGE_LOGIN_FAILURES_PER_ACCOUNT_ADDRESS",
        default_value_t = 10
    )]
    pub login_failures_per_account_address: i64,

    /// The longest a slowed-down sign-in is held before it is answered.
    #[arg(
        long,
        env = "CONCIERGE_LOGIN_MAX_DELAY_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(0..=60_000)
    )]
    pub login_max_delay_ms: u64,

    /// Failed sign-ins per client address per hour.
    #[arg(
        long,
        env = "CONCIERGE_LOGIN_FAILURES_PER_ADDRESS",
        default_value_t = 300
    )]
    pub login_failures_per_address: i64,

    /// Password hashes computed at once (each takes 19 MiB and a core for ~50 ms).
    #[arg(long, env = "CONCIERGE_PASSWORD_CONCURRENCY", default_value_t = 4)]
    pub password_concurrency: usize,

    /// E-mail of the first fleet admin, created when no user exists.
    #[arg(
        long,
        env = "CONCIERGE_ADMIN_EMAIL",
        default_value = "admin@concierge.local"
    )]
    pub admin_email: String,

    /// One-time password of the first fleet admin; generated and printed once when unset.
    #[arg(long, env = "CONCIERGE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Seconds between full inventory reconciles of each host.
    #[arg(long, env = "CONCIERGE_RECONCILE_SECONDS", default_value_t = 60)]
    pub reconcile_seconds: u64,

    /// Seconds between metrics samples of each host (libvirt bulk stats); 0 turns sampling off.
    #[arg(long, env = "CONCIERGE_SAMPLE_SECONDS", default_value_t = 15)]
    pub sample_seconds: u64,

    /// Hours raw metrics samples are kept (5-minute and hourly buckets: 13 months; daily:
    /// for ever).
    #[arg(long, env = "CONCIERGE_RAW_METRICS_HOURS", default_value_t = 48, value_parser = clap::value_parser!(i64).range(1..=87_600))]
    pub raw_metrics_hours: i64,

    /// Hours an image upload may go without progress before it is discarded with its volume.
    #[arg(long, env = "CONCIERGE_UPLOAD_ABANDON_HOURS", default_value_t = 24, value_parser = clap::value_parser!(i64).range(1..=8_760))]
    pub upload_abandon_hours: i64,

    /// Seconds this server, told to stop (SIGTERM, Ctrl-C), keeps serving while `/healthz`
    /// answers 503, so a load balancer takes it out before it stops accepting connections.
    #[arg(long, env = "CONCIERGE_SHUTDOWN_DRAIN_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_drain_seconds: u64,

    /// Seconds this server, told to stop (SIGTERM, Ctrl-C), gives requests in flight to
    /// finish before it exits.
    #[arg(long, env = "CONCIERGE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_grace_seconds: u64,

    /// The SMTP server notification e-mails go through, as a URL: `smtp://host:25` (STARTTLS
    /// when offered), `smtp://user:password@host:587?tls=required` (STARTTLS required), or
    /// `smtps://user:password@host:465` (TLS from the start). Unset: no e-mail is sent (in-app
    /// notifications still are). The password is never logged.
    #[arg(long, env = "CONCIERGE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<crate::notifications::mail::SmtpUrl>,

    /// The sender of notification e-mails.
    #[arg(
        long,
        env = "CONCIERGE_MAIL_FROM",
        default_value = "Concierge <concierge@localhost>"
    )]
    pub mail_from: String,

    /// Seconds between alert checks (thresholds, faults, anomalies).
    #[arg(long, env = "CONCIERGE_ALERT_CHECK_SECONDS", default_value_t = 60)]
    pub alert_check_seconds: u64,

    /// Seconds between reclamation checks (rules evaluated, due proposals carried out).
    #[arg(
        long,
        env = "CONCIERGE_RECLAMATION_CHECK_SECONDS",
        default_value_t = 3600
    )]
    pub reclamation_check_seconds: u64,

    /// The Ed25519 key that signs the audit chains' checkpoints, kept outside the database:
    /// created on first start (readable by this user only). Every replica must be given the
    /// same file. Default: `$XDG_STATE_HOME/concierge/audit-signing.key` (or under
    /// `~/.local/state`).
    #[arg(long, env = "CONCIERGE_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<std::path::PathBuf>,

    /// How often each grown audit chain is verified from its last checkpoint and its head
    /// signed.
    #[arg(
        long,
        env = "CONCIERGE_AUDIT_CHECKPOINT_SECONDS",
        default_value_t = 300
    )]
    pub audit_checkpoint_seconds: u64,

    /// Hosts whose libvirt is older than this are flagged for an update (host list, fleet
    /// dashboard).
    #[arg(long, env = "CONCIERGE_MIN_LIBVIRT_VERSION", default_value = "8.0.0", value_parser = version)]
    pub min_libvirt_version: i64,

    /// Hosts whose QEMU is older than this are flagged too.
    #[arg(long, env = "CONCIERGE_MIN_QEMU_VERSION", default_value = "6.2.0", value_parser = version)]
    pub min_qemu_version: i64,

    /// Let webhooks go to loopback, link-local and private addresses (refused by default:
    /// a tenant admin could otherwise make the server call into its own network).
    #[arg(long, env = "CONCIERGE_WEBHOOKS_ALLOW_PRIVATE_NETWORKS")]
    pub webhooks_allow_private_networks: bool,

    /// Seconds before a failed webhook delivery's first retry; each next one waits four
    /// times longer (at most four hours), for a day.
    #[arg(long, env = "CONCIERGE_WEBHOOK_RETRY_SECONDS", default_value_t = 10.0)]
    pub webhook_retry_seconds: f64,

    /// Seconds a graceful (ACPI) shutdown may take before the VM is forced off.
    #[arg(
        long,
        env = "CONCIERGE_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 120
    )]
    pub shutdown_timeout_seconds: u64,

    /// Address on each host where user-mode networking forwards a port to a guest's SSH. The
    /// VM page's SSH command uses it, so it must be reachable by users (loopback suits a
    /// one-machine install).
    #[arg(
        long,
        env = "CONCIERGE_SSH_FORWARD_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub ssh_forward_address: String,

    /// Lowest and highest host port given to guests' SSH forwards (one per live VM and host).
    #[arg(long, env = "CONCIERGE_SSH_PORT_MIN", default_value_t = 22000, value_parser = clap::value_parser!(u16).range(1024..))]
    pub ssh_port_min: u16,
    #[arg(long, env = "CONCIERGE_SSH_PORT_MAX", default_value_t = 22999, value_parser = clap::value_parser!(u16).range(1024..))]
    pub ssh_port_max: u16,

    /// kvm or qemu (TCG) for the local host registered at first start; unset: detected. On
    /// machines that offer KVM but cannot run a real guest kernel under it (nested PVM), say
    /// qemu (scripts/run does when the machine is itself a VM).
    #[arg(long, env = "CONCIERGE_LOCAL_HOST_DOMAIN_TYPE", value_parser = ["kvm", "qemu"])]
    pub local_host_domain_type: Option<String>,

    /// Folder of the guest image `scripts/guest-image` builds; with `--demo` it is published
    /// as the "Debian 12" template.
    #[arg(long, env = "CONCIERGE_GUEST_IMAGE_DIR")]
    pub guest_image_dir: Option<std::path::PathBuf>,

    /// Test hook: the provisioning step after which the process exits as if it crashed
    /// (the crash-recovery tests start the real binary with it).
    #[arg(long, env = "CONCIERGE_CRASH_AFTER", hide = true)]
    pub crash_after: Option<String>,

    /// When no host is registered, register the local hypervisor (qemu:///system when
    /// libvirtd answers, else qemu:///session), or a simulated one on libvirt's test driver.
    #[arg(long, env = "CONCIERGE_LOCAL_HOST", default_value_t = true, action = clap::ArgAction::Set)]
    pub local_host: bool,

    /// Seed a demo tenant with one user per role (never in production).
    #[arg(long, env = "CONCIERGE_DEMO", default_value_t = false)]
    pub demo: bool,

    /// Provisioning jobs run at once (each holds one VM's steps).
    #[arg(long, env = "CONCIERGE_JOB_WORKERS", default_value_t = 8)]
    pub job_workers: usize,

    /// Seconds a claimed job stays leased without a heartbeat before another worker may take
    /// it over (the runner beats every third of it).
    #[arg(long, env = "CONCIERGE_JOB_LEASE_SECONDS", default_value_t = 30)]
    pub job_lease_seconds: u64,

    /// Attempts before a provisioning job fails for good and releases its quota.
    #[arg(long, env = "CONCIERGE_JOB_MAX_ATTEMPTS", default_value_t = 5)]
    pub job_max_attempts: i32,

    /// Seconds before a VM that found no host with room is placed again.
    #[arg(long, env = "CONCIERGE_PLACEMENT_RETRY_SECONDS", default_value_t = 15)]
    pub placement_retry_seconds: u64,

    /// vCPUs placed per physical CPU at most.
    #[arg(long, env = "CONCIERGE_VCPU_OVERCOMMIT", default_value_t = 4.0)]
    pub vcpu_overcommit: f64,

    /// Days an expired (stopped) VM is kept before it is deleted.
    #[arg(long, env = "CONCIERGE_LEASE_GRACE_DAYS", default_value_t = 7, value_parser = clap::value_parser!(i64).range(0..=3650))]
    pub lease_grace_days: i64,

    /// A directory of libvirt test-driver node files that fleet admins may register as
    /// simulated hosts (`test:///DIR/name.xml`). Off by default: then only `test:///default`.
    #[arg(long, env = "CONCIERGE_SIMULATED_FLEETS_DIR")]
    pub simulated_fleets_dir: Option<std::path::PathBuf>,

    /// Seconds between lease checks (reminders, expiry, deletion, stale requests).
    #[arg(long, env = "CONCIERGE_LEASE_CHECK_SECONDS", default_value_t = 60)]
    pub lease_check_seconds: u64,
}

fn default_db_connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores * 4).unwrap_or(u32::MAX).max(8)
}

impl Config {
    pub fn tls(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    /// `scheme://host[:port]` of the public URL, as browsers send it in `Origin`.
    pub fn public_origin(&self) -> String {
        let url = self.public_url.trim_end_matches('/');
        match url.find("://") {
            Some(i) => match url[i + 3..].find('/') {
                Some(j) => url[..i + 3 + j].to_string(),
                None => url.to_string(),
            },
            None => url.to_string(),
        }
    }

    /// Defaults for tests: everything but the database.
    pub fn for_tests(database_url: &str) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("static address"),
            public_url: "http://127.0.0.1:3000".into(),
            database_url: database_url.into(),
            db_connections: 8,
            site_root: "target/site".into(),
            page_timeout_seconds: 30,
            session_idle_minutes: 30,
            session_absolute_hours: 12,
            login_failures_per_account: 20,
            login_failures_per_account_address: 10,
            login_max_delay_ms: 5000,
            login_failures_per_address: 300,
            password_concurrency: 4,
            admin_email: "admin@concierge.local".into(),
            admin_password: None,
            demo: false,
            reconcile_seconds: 60,
            sample_seconds: 15,
            raw_metrics_hours: 48,
            upload_abandon_hours: 24,
            shutdown_timeout_seconds: 5,
            shutdown_grace_seconds: 2,
            shutdown_drain_seconds: 0,
            smtp_url: None,
            mail_from: "Concierge <concierge@localhost>".into(),
            webhooks_allow_private_networks: false,
            reclamation_check_seconds: 3600,
            // One key for every test server (the file is made once, atomically).
            audit_key_file: Some(std::env::temp_dir().join("concierge-test-audit.key")),
            audit_checkpoint_seconds: 3600,
            min_libvirt_version: 8_000_000,
            min_qemu_version: 6_002_000,
            alert_check_seconds: 3600,
            webhook_retry_seconds: 10.0,
            crash_after: None,
            ssh_forward_address: "127.0.0.1".into(),
            ssh_port_min: 22000,
            ssh_port_max: 22999,
            local_host_domain_type: None,
            guest_image_dir: None,
            local_host: false,
            job_workers: 4,
            job_lease_seconds: 30,
            job_max_attempts: 3,
            vcpu_overcommit: 4.0,
            placement_retry_seconds: 1,
            lease_grace_days: 7,
            // Tests write their node files under the temporary directory.
            simulated_fleets_dir: Some(std::env::temp_dir()),
            lease_check_seconds: 3600,
        }
    }
}

impl Config {
    /// `--audit-key-file`, or its default under the user's state folder.
    pub fn audit_key_path(&self) -> std::path::PathBuf {
        if let Some(p) = &self.audit_key_file {
            return p.clone();
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/state"))
            })
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        state.join("concierge/audit-signing.key")
    }
}

/// `major.minor[.micro]` as libvirt numbers versions (major × 1,000,000 + minor × 1,000 + micro).
pub fn version(s: &str) -> Result<i64, String> {
    let parts: Vec<&str> = s.trim().split('.').collect();
    let nums: Option<Vec<i64>> = parts
        .iter()
        .map(|p| p.parse::<i64>().ok().filter(|n| (0..1000).contains(n)))
        .collect();
    match nums.as_deref() {
        Some([major, minor]) => Ok(major * 1_000_000 + minor * 1_000),
        Some([major, minor, micro]) => Ok(major * 1_000_000 + minor * 1_000 + micro),
        _ => Err(format!("{s:?} is not a version like 8.0.0")),
    }
}
