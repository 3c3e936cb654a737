//! Several replicas on one database: they see each other, a change committed through one
//! reaches the others' caches within a second, cluster-wide work happens once, and a
//! reconnected listener makes pages refetch.

use crate::common::*;
use app::fleet::FleetDashboard;
use app::provisioning::TenantQuotas;
use concierge::platform::clock::Clock;
use futures::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn health(base: &str) -> Value {
    let res = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(res.status(), 200);
    res.json().await.expect("healthz answers JSON")
}

/// The replicas `/healthz` lists as alive, and the one that answered.
fn alive(h: &Value) -> (Vec<Uuid>, Uuid) {
    let ids = h["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["alive"] == true)
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    (ids, h["replica"].as_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn replicas_see_each_other_and_a_stopped_one_is_gone_at_once() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let (ia, ib) = (a.state.replica.id, b.app.state.replica.id);
    assert_ne!(ia, ib);
    let (live, me) = alive(&health(&a.base).await);
    assert_eq!(me, ia);
    assert!(live.contains(&ia) && live.contains(&ib), "{live:?}");
    // The fleet dashboard lists both, marking the one that served the page.
    let admin = a.fleet_admin().await;
    let d: FleetDashboard = admin.call_as("fleet_dashboard", &[]).await.unwrap();
    let this: Vec<_> = d.replicas.iter().filter(|r| r.this).map(|r| r.id).collect();
    assert_eq!(this, [ia]);
    assert!(d
        .replicas
        .iter()
        .all(|r| r.alive && r.version == env!("CARGO_PKG_VERSION")));
    // Health answers without a session, and names no addresses.
    assert!(!health(&a.base).await.to_string().contains("127.0.0.1"));

    b.stop().await;
    let (live, _) = alive(&health(&a.base).await);
    assert_eq!(live, [ia], "a stopped replica is not counted on");
}

#[tokio::test]
async fn a_member_removed_through_one_replica_is_refused_on_the_other_within_a_second() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let t = a.tenant("acme").await;
    let (user, on_a) = a
        .signed_in("ann@example.com", Some((t, "tenant_admin")))
        .await;
    // The same browser reaching the other replica (cookies do not depend on the port).
    let on_b = Client {
        http: on_a.http.clone(),
        base: b.app.base.clone(),
    };
    let tenant = t.to_string();
    let quotas = || async {
        on_b.call_as::<TenantQuotas>("tenant_quotas", &[("tenant_id", &tenant)])
            .await
    };
    // B resolves and caches the actor (several reads, so the cache is warm).
    for _ in 0..3 {
        assert_eq!(quotas().await.unwrap().tenant_id, t);
    }
    let admin = a.fleet_admin().await;
    admin
        .call(
            "remove_member",
            &[("tenant_id", &tenant), ("user_id", &user.to_string())],
        )
        .await
        .expect("the fleet admin removes ann on replica A");
    let removed = Instant::now();
    loop {
        match quotas().await {
            Err((status, _)) => {
                assert!(matches!(status, 403 | 404), "{status}");
                break;
            }
            Ok(_) => assert!(
                removed.elapsed() < Duration::from_secs(1),
                "replica B still let ann in {:?} after A removed her",
                removed.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Signing out everywhere on A ends the session on B as well.
    let (_, on_a) = a.signed_in("bob@example.com", None).await;
    let on_b = Client {
        http: on_a.http.clone(),
        base: b.app.base.clone(),
    };
    assert_eq!(on_b.whoami().await.as_deref(), Some("bob@example.com"));
    on_a.call("logout", &[]).await.expect("bob signs out on A");
    let out = Instant::now();
    while on_b.whoami().await.is_some() {
        assert!(
            out.elapsed() < Duration::from_secs(1),
            "B kept bob's session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn cluster_work_runs_once_whichever_replicas_ask() {
    let a = spawn_app().await;
    let b = a.replica().await;
    let t = a.tenant("acme").await;
    let owner = a.user("ann@example.com", Some((t, "requester"))).await;
    // A running VM whose lease ends in three days: due for its 7-day reminder.
    let now = a.clock.now();
    sqlx::query(
        "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib, phase, lease_ends_at, created_at, updated_at)
         VALUES ($1, $2, $3, 'web-1', 1, 512, 10, 'running', $4, $5, $5)",
    )
    .bind(Uuid::new_v4())
    .bind(t)
    .bind(owner)
    .bind(now + time::Duration::days(3))
    .bind(now - time::Duration::hours(2))
    .execute(&a.db)
    .await
    .unwrap();
    // Both replicas' lease checks at the same moment, several times.
    let mut reminded = 0;
    for _ in 0..3 {
        let (x, y) = tokio::join!(a.state.leases.tick(), b.app.state.leases.tick());
        reminded += x.unwrap().reminded + y.unwrap().reminded;
    }
    assert_eq!(reminded, 1);
    let audited = a
        .scalar_i64("SELECT count(*) FROM audit_log WHERE action = 'vm.lease.remind'")
        .await;
    assert_eq!(audited, 1);
    // Usage rolled up by both at once: every hour once.
    a.clock.advance(time::Duration::hours(5));
    let now = a.clock.now();
    let (x, y) = tokio::join!(
        concierge::metering::usage::rollup(&a.state.pool, now, 24),
        concierge::metering::usage::rollup(&b.app.state.pool, now, 24)
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert!(x == 0 || y == 0, "both rolled up: {x} and {y} hours");
    assert!(x + y > 0, "the VM's hours were rolled up");
    let hours = a
        .scalar_i64("SELECT count(DISTINCT hour) FROM usage_hourly")
        .await;
    let rows = a.scalar_i64("SELECT count(*) FROM usage_hourly").await;
    assert!(rows > 0);
    assert_eq!(hours, rows, "one row per VM and hour");
    b.stop().await;
}

#[tokio::test]
async fn a_reconnected_listener_makes_open_pages_refetch() {
    let a = spawn_app().await;
    let admin = a.fleet_admin().await;
    let res = admin
        .http
        .get(format!("{}/live", a.base))
        .send()
        .await
        .expect("open /live");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let db_name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&a.db)
        .await
        .unwrap();
    // Cut the server's LISTEN connection, as a PostgreSQL restart or a network blip would.
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&db_name)
    .fetch_one(&a.db)
    .await
    .unwrap();
    assert_eq!(cut, 1, "one listener connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains(r#""kind":"lagged""#) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => {
                panic!("no refetch event after the listener reconnected: {other:?}, got {seen:?}")
            }
        }
    }
}
