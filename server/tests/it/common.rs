//! `spawn_app()`: a real server on a random port over a fresh PostgreSQL database.
#![allow(dead_code)]

use app::account::Actor;
use app::error::AppError;
use app::tenant::NewInvitation;
use concierge::config::Config;
use concierge::platform::clock::ManualClock;
use concierge::state::AppState;
use concierge::Server;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

pub const PASSWORD: &str = "correct-horse-battery";
pub const ADMIN_PASSWORD: &str = "first-admin-password";
pub const ORIGIN: &str = "http://127.0.0.1:3000";
/// A request that hangs fails its test instead of the whole run (the server's own page
/// deadline, 30 s, answers first; this is the backstop).
const PAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

pub struct TestApp {
    pub base: String,
    /// The database's URL (the owner's).
    pub url: String,
    /// The owner connection: sees everything, bypasses row-level security.
    pub db: PgPool,
    pub clock: Arc<ManualClock>,
    pub state: AppState,
    password_hash: String,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL server whose user may create databases (scripts/test sets it)")
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{base}/{db}{query}")
}

/// The configuration every test server starts with.
fn test_config(url: &str) -> Config {
    let mut config = Config::for_tests(url);
    config.admin_password = Some(ADMIN_PASSWORD.into());
    config.db_connections = 6;
    config
}

/// A new, empty database for one test; its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("concierge_test_{}", Uuid::new_v4().simple());
    let maintenance = PgPoolOptions::new()
        .max_connections(1)
        .connect(&with_database(&admin, "postgres"))
        .await
        .expect("connect to the maintenance database");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maintenance)
        .await
        .expect("create the test database");
    maintenance.close().await;
    with_database(&admin, &name)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    // The server's warnings and errors go to the test's captured output: a failing test shows
    // what the server said (RUST_LOG widens it).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let url = fresh_database().await;

    let mut config = test_config(&url);
    tweak(&mut config);
    let clock = Arc::new(ManualClock::default());
    let server = Server::build(config, clock.clone())
        .await
        .expect("server starts");
    let base = format!("http://{}", server.addr);
    let state = server.state.clone();
    tokio::spawn(server.run());

    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .expect("owner pool");
    let password_hash = state.accounts.hasher.hash(PASSWORD).await.expect("hash");
    TestApp {
        base,
        url,
        db,
        clock,
        state,
        password_hash,
    }
}

/// A second server process's worth (a replica) on a running app's database and clock.
pub struct Replica {
    pub app: TestApp,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Starts another server on this app's database, as a second replica would.
    pub async fn replica(&self) -> Replica {
        let server = Server::build(test_config(&self.url), self.clock.clone())
            .await
            .expect("replica starts");
        let base = format!("http://{}", server.addr);
        let state = server.state.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(server.run_until(async {
            let _ = stopped.await;
        }));
        Replica {
            app: TestApp {
                base,
                url: self.url.clone(),
                db: self.db.clone(),
                clock: self.clock.clone(),
                state,
                password_hash: self.password_hash.clone(),
            },
            stop: Some(stop),
            served,
        }
    }
}

impl Replica {
    /// Stops it as SIGTERM would, and waits until it has.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.served
            .await
            .expect("the replica's task")
            .expect("the replica stops cleanly");
    }
}

/// A browser-like client with its own cookie jar.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

pub type CallResult<T = Value> = Result<T, (u16, AppError)>;

impl Client {
    /// A browser-like client of the server at `base`, with its own cookie jar.
    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: base.to_string(),
        }
    }

    /// `call`, its answer read as the app's own DTO: a field the DTO lacks or misnames fails
    /// here instead of comparing a JSON null.
    pub async fn call_as<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> CallResult<T> {
        self.call(endpoint, form).await.map(|v| {
            serde_json::from_value(v.clone())
                .unwrap_or_else(|e| panic!("{endpoint} answered {v}, not its DTO: {e}"))
        })
    }

    /// Calls a server function the way the hydrated app does (form body, same-origin).
    pub async fn call(&self, endpoint: &str, form: &[(&str, &str)]) -> CallResult {
        let res = self
            .http
            .post(format!("{}/api/{endpoint}", self.base))
            .header("Origin", ORIGIN)
            .header("Sec-Fetch-Site", "same-origin")
            .form(form)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("calling {endpoint}: {e}"));
        let status = res.status().as_u16();
        let body = res.text().await.expect("body");
        if status == 200 {
            Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
        } else {
            let err = serde_json::from_str::<AppError>(&body)
                .unwrap_or_else(|_| AppError::Transport(format!("{status}: {body}")));
            Err((status, err))
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("Accept", "text/html")
            .timeout(PAGE_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The signed-in user's e-mail, or None when anonymous.
    pub async fn whoami(&self) -> Option<String> {
        self.call_as::<Option<Actor>>("current_actor", &[])
            .await
            .expect("current_actor")
            .map(|a| a.email)
    }

    pub async fn login(&self, email: &str, password: &str) -> CallResult {
        self.call("login", &[("email", email), ("password", password)])
            .await
    }
}

impl TestApp {
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// The first fleet admin, signed in, with the one-time password already replaced.
    pub async fn fleet_admin(&self) -> Client {
        sqlx::query("UPDATE users SET must_change_password = false WHERE lower(email) = 'admin@concierge.local'")
            .execute(&self.db)
            .await
            .unwrap();
        let c = self.client();
        c.login("admin@concierge.local", ADMIN_PASSWORD)
            .await
            .expect("admin signs in");
        c
    }

    /// Its accounts helper (users with password `PASSWORD`).
    fn accounts(&self) -> Accounts {
        Accounts {
            db: self.db.clone(),
            hash: self.password_hash.clone(),
        }
    }

    pub async fn tenant(&self, name: &str) -> Uuid {
        self.accounts().tenant(name).await
    }

    /// Creates a user (password `PASSWORD`, no pending change) with an optional membership.
    pub async fn user(&self, email: &str, membership: Option<(Uuid, &str)>) -> Uuid {
        self.accounts().user(email, membership).await
    }

    /// Makes `user` a member of `tenant` directly (before they sign in: actors are cached).
    pub async fn add_membership(&self, tenant: Uuid, user: Uuid, role: &str) {
        self.accounts().add_membership(tenant, user, role).await
    }

    /// A signed-in client for a new user.
    pub async fn signed_in(&self, email: &str, membership: Option<(Uuid, &str)>) -> (Uuid, Client) {
        let id = self.user(email, membership).await;
        let c = self.client();
        c.login(email, PASSWORD).await.expect("user signs in");
        (id, c)
    }

    /// A browser-like client whose requests come from another loopback address (the server
    /// sees `addr` as the client address), e.g. 127.0.0.2.
    pub fn client_from(&self, addr: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .local_address(addr.parse::<std::net::IpAddr>().expect("an address"))
                .build()
                .expect("client"),
            base: self.base.clone(),
        }
    }

    /// Redeems an invitation (`add_member`'s answer) as a newcomer: creates the account with
    /// password `PASSWORD` and returns the signed-in client.
    pub async fn join(&self, invitation: &NewInvitation, name: &str) -> Client {
        let c = self.client();
        c.call(
            "join",
            &[
                ("email", invitation.email.as_str()),
                ("code", invitation.code.as_str()),
                ("display_name", name),
                ("password", PASSWORD),
                ("confirm_password", PASSWORD),
            ],
        )
        .await
        .expect("joins with the invitation");
        c
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.db).await.unwrap()
    }

    /// A digest of everything a refused operation must leave untouched.
    pub async fn snapshot(&self) -> String {
        sqlx::query_scalar(
            "SELECT concat_ws('|',
                (SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM tenants t),
                (SELECT md5(coalesce(string_agg(u::text, ',' ORDER BY u.id), '')) FROM users u),
                (SELECT md5(coalesce(string_agg(m::text, ',' ORDER BY m.tenant_id, m.user_id), '')) FROM memberships m),
                (SELECT count(*)::text FROM user_sessions),
                (SELECT md5(coalesce(string_agg(i::text, ',' ORDER BY i.id), '')) FROM invitations i),
                (SELECT count(*)::text FROM audit_log))",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    pub async fn audit_actions(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
            .fetch_all(&self.db)
            .await
            .unwrap()
    }
}

/// An answer kept as JSON for a raw-shape check (a field absent, a secret never in the text),
/// read as its DTO for everything else.
pub fn as_dto<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v} is not the DTO: {e}"))
}

/// Asserts a refusal: an authentication, authorization or not-found error.
pub fn assert_refused<T: std::fmt::Debug>(result: &CallResult<T>, what: &str) {
    match result {
        Err((status, _)) if [401, 403, 404].contains(status) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// Asserts a validation error on `field`.
pub fn assert_field_error<T: std::fmt::Debug>(result: &CallResult<T>, field: &str) -> String {
    match result {
        Err((422, err)) => err
            .field_message(field)
            .unwrap_or_else(|| panic!("expected an error on {field}, got {err:?}")),
        other => panic!("expected a validation error on {field}, got {other:?}"),
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `concierge` binary as a child process on `url`, listening on a free port.
pub struct Process {
    pub child: tokio::process::Child,
    pub base: String,
    log: Arc<Mutex<String>>,
    label: String,
}

impl Process {
    /// Starts it with the environment the tests share, plus `env` (name, value) pairs.
    pub async fn start(url: &str, label: &str, env: &[(&str, &str)]) -> Process {
        let label = label.to_string();
        let dir = std::env::temp_dir().join("concierge-process-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_concierge"));
        cmd.env("DATABASE_URL", url)
            .env("CONCIERGE_LISTEN", "127.0.0.1:0")
            .env("CONCIERGE_PUBLIC_URL", ORIGIN)
            .env("CONCIERGE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("CONCIERGE_LOCAL_HOST", "false")
            .env("CONCIERGE_SITE_ROOT", &dir)
            .env("CONCIERGE_DB_CONNECTIONS", "6")
            .env(
                "CONCIERGE_AUDIT_KEY_FILE",
                std::env::temp_dir().join("concierge-test-audit.key"),
            )
            // A dead runner's job is taken over 3 s after its last heartbeat.
            .env("CONCIERGE_JOB_LEASE_SECONDS", "3")
            .env("CONCIERGE_JOB_MAX_ATTEMPTS", "3")
            .env("RUST_LOG", "info,sqlx=warn,tower_sessions=warn")
            .env("NO_COLOR", "1")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.env_remove("CONCIERGE_CRASH_AFTER");
        for (name, value) in env {
            cmd.env(name, value);
        }
        let mut child = cmd.spawn().expect("start the concierge binary");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let (log, addr_tx) = (log.clone(), addr_tx.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = strip_ansi(&line);
                    if let Some(i) = line.find("listening on http://") {
                        let addr = line[i + "listening on ".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let _ = addr_tx.send(addr);
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        drop(addr_tx);
        let base = tokio::time::timeout(Duration::from_secs(90), addr_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{label} did not start:\n{}", log.lock().unwrap().as_str()));
        Process {
            child,
            base,
            log,
            label,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    pub async fn admin(&self) -> Client {
        let c = self.client();
        c.login("admin@concierge.local", ADMIN_PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("admin signs in to {}: {e:?}", self.label));
        c
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} log (last 40 lines) ---", self.label);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Accounts for tests that run the binary (no `TestApp`): users written straight into its
/// database with password `PASSWORD`, and the first fleet admin ready to act.
pub struct Accounts {
    db: PgPool,
    hash: String,
}

impl Accounts {
    pub async fn new(db: &PgPool) -> Accounts {
        sqlx::query("UPDATE users SET must_change_password = false WHERE lower(email) = 'admin@concierge.local'")
            .execute(db)
            .await
            .unwrap();
        let hash = concierge::accounts::password::Hasher::new(1)
            .hash(PASSWORD)
            .await
            .expect("hash");
        Accounts {
            db: db.clone(),
            hash,
        }
    }

    pub async fn tenant(&self, name: &str) -> Uuid {
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ($1) RETURNING id")
            .bind(name)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn user(&self, email: &str, membership: Option<(Uuid, &str)>) -> Uuid {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO users (email, display_name, password_hash, must_change_password)
             VALUES ($1, $1, $2, false) RETURNING id",
        )
        .bind(email)
        .bind(&self.hash)
        .fetch_one(&self.db)
        .await
        .unwrap();
        if let Some((tenant, role)) = membership {
            self.add_membership(tenant, id, role).await;
        }
        id
    }

    pub async fn add_membership(&self, tenant: Uuid, user: Uuid, role: &str) {
        sqlx::query(
            "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, $3::tenant_role)",
        )
        .bind(tenant)
        .bind(user)
        .bind(role)
        .execute(&self.db)
        .await
        .unwrap();
    }
}
