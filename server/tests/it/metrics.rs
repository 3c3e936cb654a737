//! Metrics rollups against PostgreSQL: known samples give known 5-minute, hourly and daily
//! min/avg/max; rollups are incremental; gaps stay gaps; retention expires each level.

use crate::common::*;
use concierge::metering::metrics::{self, Range, Retention};
use concierge::platform::db::Scope;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

#[allow(clippy::too_many_arguments)]
async fn sample(
    app: &TestApp,
    subject: Uuid,
    host: Uuid,
    at: OffsetDateTime,
    cpu: Option<f32>,
    mem: i64,
    rd: Option<f32>,
    vms: Option<i32>,
) {
    sqlx::query(
        "INSERT INTO metric_samples (subject, is_host, host_id, at, cpu_pct, mem_bytes, disk_rd_bps, vms)
         VALUES ($1, $1 = $2, $2, $3, $4, $5, $6, $7)",
    )
    .bind(subject)
    .bind(host)
    .bind(at)
    .bind(cpu)
    .bind(mem)
    .bind(rd)
    .bind(vms)
    .execute(&app.db)
    .await
    .unwrap();
}

#[derive(sqlx::FromRow, Debug)]
struct Bucket {
    n: i32,
    rate_n: i32,
    cpu_min: Option<f32>,
    cpu_sum: Option<f64>,
    cpu_max: Option<f32>,
    mem_min: Option<i64>,
    mem_sum: Option<f64>,
    mem_max: Option<i64>,
    vms_sum: Option<f64>,
}

async fn bucket(app: &TestApp, res: i32, subject: Uuid, at: OffsetDateTime) -> Option<Bucket> {
    sqlx::query_as(
        "SELECT n, rate_n, cpu_min, cpu_sum, cpu_max, mem_min, mem_sum, mem_max, vms_sum
         FROM metric_rollups WHERE resolution = $1 AND subject = $2 AND bucket = $3",
    )
    .bind(res)
    .bind(subject)
    .bind(at)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

fn avg(sum: Option<f64>, n: i32) -> f64 {
    sum.unwrap() / f64::from(n)
}

#[tokio::test]
async fn rollups_give_known_buckets_incrementally_and_expire() {
    let app = spawn_app().await;
    // Days ahead of the server's own rollup worker, which runs on the real clock.
    let now = OffsetDateTime::now_utc();
    let t0 = OffsetDateTime::from_unix_timestamp(
        now.unix_timestamp() - now.unix_timestamp().rem_euclid(86400),
    )
    .unwrap()
        + Duration::days(10);
    let host = Uuid::new_v4();
    let vm = Uuid::new_v4();
    // Leased to a replica that does not exist, so no host actor of this server samples it.
    sqlx::query(
        "WITH h AS (INSERT INTO hosts (id, name, uri, cpus) VALUES ($1, 'h1', 'test:///default', 4) RETURNING id)
         INSERT INTO host_leases (host_id, owner, epoch, expires_at) SELECT id, $2, 1, now() + interval '1 hour' FROM h",
    )
    .bind(host)
    .bind(Uuid::new_v4())
    .execute(&app.db)
    .await
    .unwrap();
    let s = |secs: i64| t0 + Duration::seconds(secs);
    // First 5-minute bucket: three samples with rates.
    sample(&app, vm, host, s(0), Some(10.0), 100, Some(1000.0), None).await;
    sample(&app, vm, host, s(60), Some(20.0), 200, Some(3000.0), None).await;
    sample(&app, vm, host, s(120), Some(30.0), 300, Some(2000.0), None).await;
    // Second bucket: a sample without rates (first after a reconnect), then one with.
    sample(&app, vm, host, s(300), None, 400, None, None).await;
    sample(&app, vm, host, s(360), Some(60.0), 500, Some(0.0), None).await;
    // A gap of most of an hour, then the next hour.
    sample(&app, vm, host, s(3600), Some(40.0), 100, Some(0.0), None).await;
    sample(&app, host, host, s(0), Some(50.0), 1000, None, Some(3)).await;
    sample(&app, host, host, s(3600), Some(70.0), 3000, None, Some(5)).await;

    let report = metrics::rollup(&app.db, t0 + Duration::hours(26), Retention::default())
        .await
        .unwrap();
    assert!(report.written.iter().all(|w| *w > 0), "{report:?}");

    let b = bucket(&app, 300, vm, s(0))
        .await
        .expect("first 5-minute bucket");
    assert_eq!((b.n, b.rate_n), (3, 3));
    assert_eq!(
        (b.cpu_min, avg(b.cpu_sum, b.rate_n), b.cpu_max),
        (Some(10.0), 20.0, Some(30.0))
    );
    assert_eq!(
        (b.mem_min, avg(b.mem_sum, b.n), b.mem_max),
        (Some(100), 200.0, Some(300))
    );
    let b = bucket(&app, 300, vm, s(300)).await.expect("second bucket");
    assert_eq!((b.n, b.rate_n), (2, 1));
    assert_eq!(avg(b.cpu_sum, b.rate_n), 60.0);
    assert_eq!(avg(b.mem_sum, b.n), 450.0);
    // The gap has no buckets, not zeros.
    assert!(bucket(&app, 300, vm, s(600)).await.is_none());
    assert!(bucket(&app, 300, vm, s(1800)).await.is_none());

    let h = bucket(&app, 3600, vm, s(0)).await.expect("first hour");
    assert_eq!((h.n, h.rate_n), (5, 4));
    assert_eq!(
        (h.cpu_min, avg(h.cpu_sum, h.rate_n), h.cpu_max),
        (Some(10.0), 30.0, Some(60.0))
    );
    assert_eq!(avg(h.mem_sum, h.n), 300.0);
    let d = bucket(&app, 86400, vm, s(0)).await.expect("first day");
    assert_eq!((d.n, d.rate_n), (6, 5));
    assert_eq!(
        (d.cpu_min, avg(d.cpu_sum, d.rate_n), d.cpu_max),
        (Some(10.0), 32.0, Some(60.0))
    );
    assert_eq!((d.mem_min, d.mem_max), (Some(100), Some(500)));
    let hd = bucket(&app, 86400, host, s(0)).await.expect("host day");
    assert_eq!(avg(hd.vms_sum, hd.n), 4.0);

    // Running again over the same time changes nothing (the watermarks moved on).
    let again = metrics::rollup(&app.db, t0 + Duration::hours(26), Retention::default())
        .await
        .unwrap();
    assert_eq!(again.written, [0, 0, 0]);
    assert_eq!(bucket(&app, 86400, vm, s(0)).await.unwrap().n, 6);

    // New samples are rolled on the next run, into new buckets only.
    sample(
        &app,
        vm,
        host,
        s(26 * 3600 + 10),
        Some(90.0),
        100,
        Some(0.0),
        None,
    )
    .await;
    metrics::rollup(&app.db, t0 + Duration::hours(27), Retention::default())
        .await
        .unwrap();
    let b = bucket(&app, 300, vm, s(26 * 3600))
        .await
        .expect("new bucket");
    assert_eq!((b.n, b.cpu_max), (1, Some(90.0)));
    assert_eq!(bucket(&app, 3600, vm, s(0)).await.unwrap().n, 5);

    // A chart over 7 days reads hourly buckets plus the not-yet-hourly tail.
    let series = metrics::subject_series(
        &app.db,
        Scope::fleet(),
        vm,
        Range::Days7,
        t0 + Duration::hours(27),
    )
    .await
    .unwrap();
    let cpu = &series["cpu"];
    assert_eq!(cpu.len(), 3, "{cpu:?}");
    assert_eq!((cpu[0].avg, cpu[1].avg, cpu[2].avg), (30.0, 40.0, 90.0));
    // Over 24 hours, 5-minute buckets, the raw tail included.
    sample(
        &app,
        vm,
        host,
        s(27 * 3600 - 20),
        Some(70.0),
        100,
        Some(0.0),
        None,
    )
    .await;
    let series = metrics::subject_series(
        &app.db,
        Scope::fleet(),
        vm,
        Range::Hours6,
        t0 + Duration::hours(27),
    )
    .await
    .unwrap();
    let last = series["cpu"].last().unwrap();
    assert_eq!((last.at, last.avg), (s(27 * 3600 - 300), 70.0));
    // A tenant's scope sees nothing of a subject outside it (row-level security).
    let other = metrics::subject_series(
        &app.state.pool,
        Scope {
            user: None,
            tenant: Some(Uuid::new_v4()),
            fleet: false,
        },
        vm,
        Range::Days7,
        t0 + Duration::hours(27),
    )
    .await
    .unwrap();
    assert!(other.is_empty());

    // The fleet: CPU weighted by host CPUs, VMs and memory summed over hosts.
    let fleet = metrics::fleet_series(&app.db, Range::Days7, t0 + Duration::hours(27))
        .await
        .unwrap();
    assert_eq!(
        fleet["cpu"].iter().map(|p| p.avg).collect::<Vec<_>>(),
        vec![50.0, 70.0]
    );
    assert_eq!(
        fleet["vms"].iter().map(|p| p.avg).collect::<Vec<_>>(),
        vec![3.0, 5.0]
    );

    // Retention: raw samples after 48 hours; 5-minute and hourly buckets after 13 months;
    // daily buckets stay.
    metrics::rollup(&app.db, t0 + Duration::hours(60), Retention::default())
        .await
        .unwrap();
    let raw_left = app
        .scalar_i64(&format!(
            "SELECT count(*) FROM metric_samples WHERE at < '{}'",
            (t0 + Duration::hours(12))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        ))
        .await;
    assert_eq!(raw_left, 0);
    assert!(bucket(&app, 300, vm, s(0)).await.is_some());
    metrics::rollup(&app.db, t0 + Duration::days(400), Retention::default())
        .await
        .unwrap();
    assert!(bucket(&app, 300, vm, s(0)).await.is_none());
    assert!(bucket(&app, 3600, vm, s(0)).await.is_none());
    assert_eq!(bucket(&app, 86400, vm, s(0)).await.unwrap().n, 6);
}

#[tokio::test]
async fn a_chart_over_any_range_reaches_the_newest_raw_sample() {
    let app = spawn_app().await;
    let host = Uuid::new_v4();
    let vm = Uuid::new_v4();
    let now = OffsetDateTime::now_utc();
    sample(&app, vm, host, now, Some(42.0), 100, Some(0.0), None).await;
    for range in [Range::Hours6, Range::Days7, Range::Year] {
        let s = metrics::subject_series(
            &app.db,
            Scope::fleet(),
            vm,
            range,
            now + Duration::seconds(1),
        )
        .await
        .unwrap();
        let cpu = &s["cpu"];
        assert_eq!(cpu.len(), 1, "{range:?}: {cpu:?}");
        assert_eq!(cpu[0].avg, 42.0);
    }
}
