//! Notification fan-out: 1,000 events, each told to one of 100 people in the app and by
//! e-mail, written in one transaction (as a burst of events would be); then the server's job
//! runners send the mails to a real SMTP server on loopback (Debian's aiosmtpd, discarding).
//!
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p server --bench notify
//!
//! Prints per round: the time to write the 1,000 notifications (in-app rows, preferences read,
//! mail jobs queued) and the time until every mail is sent; the control is the same burst
//! written in-app only (everyone's e-mail turned off), in the same run. Then the medians.
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

/// The SMTP server, stopped when the benchmark ends however it ends.
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
async fn burst(pool: &sqlx::PgPool, people: &[Uuid], round: usize) -> anyhow::Result<Duration> {
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

    let mut config = Config::for_tests(&url);
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
    println!("{EVENTS} events to {PEOPLE} people, in the app and by e-mail; {ROUNDS} rounds");
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
        let control = burst(&pool, &people, round * 2).await?;
        sqlx::query("DELETE FROM notification_preferences")
            .execute(&owner)
            .await?;

        let started = Instant::now();
        let write = burst(&pool, &people, round * 2 + 1).await?;
        loop {
            let queued: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE email = 'queued'")
                    .fetch_one(&owner)
                    .await?;
            if queued == 0 {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "{queued} mails still queued after 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all = started.elapsed();
        let failed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE email = 'failed'")
                .fetch_one(&owner)
                .await?;
        anyhow::ensure!(failed == 0, "{failed} mails failed");
        println!(
            "round {}: in-app only {:.0} ms; in-app + e-mail queued {:.0} ms; all {EVENTS} mails sent after {:.1} s ({:.0} mails/s)",
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
        "median: in-app only {:.0} ms, in-app + e-mail queued {:.0} ms, everything delivered in {:.1} s (target < 60 s)",
        median(controls),
        median(writes),
        median(delivered)
    );
    drop(owner);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    Ok(())
}
