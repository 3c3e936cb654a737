//! Notification fan-out: 1,000 events, each told to one of 100 people in the app and by
//! e-mail and published to a webhook endpoint, written in one transaction (as a burst of
//! events would be); then the server's job runners send the mails to a real SMTP server on
//! loopback (Debian's aiosmtpd, discarding) and POST the signed events to a real HTTP server
//! on loopback (the tests' Python receiver).
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench notify
//!
//! Prints per round: the time to write the 1,000 notifications (in-app rows, preferences read,
//! mail jobs and webhook deliveries queued) and the time until every mail is sent and every
//! webhook delivered; the control is the same burst written in-app only (everyone's e-mail
//! turned off, no endpoint), in the same run. Then the medians.
use app::notifications::NotificationKind;
use concierge::config::Config;
use concierge::notifications::{self, Notice};
use concierge::platform::clock::SystemClock;
use concierge::platform::db::{self, Scope};
use concierge::Server;
use sqlx::postgres::PgPoolOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const EVENTS: usize = 1_000;
const PEOPLE: usize = 100;
const ROUNDS: usize = 3;

/// The SMTP server and the webhook receiver, stopped when the benchmark ends however it ends.
struct Smtpd(std::process::Child);

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Writes the burst in one transaction; returns how long it took.
async fn burst(
    pool: &sqlx::PgPool,
    people: &[Uuid],
    round: usize,
    webhook: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let now = time::OffsetDateTime::now_utc();
    for i in 0..EVENTS {
        notifications::send(
            &mut tx,
            Notice {
                user: people[i % people.len()],
                tenant: None,
                kind: NotificationKind::RequestFulfilled,
                title: format!("Ready: bench-{round}-{i} (Debian 12)"),
                body: "Fulfilled: every VM is running.".into(),
                link: format!("/requests/{}", Uuid::new_v4()),
            },
            now,
        )
        .await?;
        if webhook {
            notifications::webhooks::publish(
                &mut tx,
                None,
                "request.fulfilled",
                serde_json::json!({ "name_prefix": format!("bench-{round}-{i}") }),
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL (a server whose user may create databases)");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let name = format!("concierge_bench_{}", Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base}/{name}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _smtpd = Smtpd(
        std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Sink"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd (apt-get install python3-aiosmtpd)"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }

    let hook_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hook_log = std::env::temp_dir().join(format!("{name}.jsonl"));
    let _receiver = Smtpd(
        std::process::Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/webhook_receiver.py"
            ))
            .arg(hook_port.to_string())
            .arg(&hook_log)
            .spawn()
            .expect("python3"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", hook_port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut config = Config::for_tests(&url);
    config.webhooks_allow_private_networks = true;
    config.job_workers = 8; // the server's default
    config.local_host = false;
    config.smtp_url = Some(format!("smtp://127.0.0.1:{port}").parse().unwrap());
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let pool = server.state.pool.clone();
    tokio::spawn(server.run());
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let mut people = Vec::new();
    for i in 0..PEOPLE {
        people.push(
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO users (email, display_name, password_hash, must_change_password)
                 VALUES ($1, $2, 'x', false) RETURNING id",
            )
            .bind(format!("person{i}@bench.example"))
            .bind(format!("Person {i}"))
            .fetch_one(&owner)
            .await?,
        );
    }
    sqlx::query(
        "INSERT INTO webhook_endpoints (url, secret, event_types, created_at)
         VALUES ($1, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '{request.fulfilled}', now())",
    )
    .bind(format!("http://127.0.0.1:{hook_port}/ok"))
    .execute(&owner)
    .await?;
    println!("{EVENTS} events to {PEOPLE} people, in the app, by e-mail and to a webhook; {ROUNDS} rounds");
    let (mut writes, mut delivered, mut controls) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Control: the same burst in the app only.
        sqlx::query(
            "INSERT INTO notification_preferences (user_id, kind, channel, enabled)
             SELECT id, 'request_fulfilled', 'email', false FROM users WHERE email LIKE '%@bench.example'
             ON CONFLICT (user_id, kind, channel) DO UPDATE SET enabled = false",
        )
        .execute(&owner)
        .await?;
        let control = burst(&pool, &people, round * 2, false).await?;
        sqlx::query("DELETE FROM notification_preferences")
            .execute(&owner)
            .await?;

        let started = Instant::now();
        let write = burst(&pool, &people, round * 2 + 1, true).await?;
        loop {
            let queued: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM notifications WHERE email = 'queued')
                      + (SELECT count(*) FROM webhook_deliveries WHERE state = 'pending')",
            )
            .fetch_one(&owner)
            .await?;
            if queued == 0 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{queued} mails and webhooks still queued after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = started.elapsed();
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE email = 'failed'")
                .fetch_one(&owner)
                .await?;
        anyhow::ensure!(failed == 0, "{failed} mails failed");
        let hooks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered' AND attempts = 1",
        )
        .fetch_one(&owner)
        .await?;
        anyhow::ensure!(
            hooks == (EVENTS * (round + 1)) as i64,
            "{hooks} webhooks delivered at the first attempt"
        );
        println!(
            "round {}: in-app only {:.0} ms; in-app + e-mail + webhook queued {:.0} ms; all {EVENTS} mails sent and webhooks delivered after {:.1} s ({:.0} events/s)",
            round + 1,
            control.as_secs_f64() * 1000.0,
            write.as_secs_f64() * 1000.0,
            all.as_secs_f64(),
            EVENTS as f64 / all.as_secs_f64()
        );
        controls.push(control.as_secs_f64() * 1000.0);
        writes.push(write.as_secs_f64() * 1000.0);
        delivered.push(all.as_secs_f64());
    }
    println!(
        "median: in-app only {:.0} ms, in-app + e-mail + webhook queued {:.0} ms, everything delivered in {:.1} s (target < 60 s)",
        median(controls),
        median(writes),
        median(delivered)
    );
    drop(owner);
    let _ = std::fs::remove_file(&hook_log);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    Ok(())
}
