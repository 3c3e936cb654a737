//! Alerts on simulated metrics (samples and hourly buckets written for the minutes and weeks
//! in question; the server's own sampler is off): a threshold held for its duration fires once
//! and resolves once, told to the rule's tenant admins only; an injected spike is an anomaly
//! and a normal daily cycle is not; a crashed domain and a flapping host are faults.

use crate::common::*;
use crate::provisioning::{world_with, World};
use app::alerts::{Alert, AlertsOverview};
use app::notifications::{Notification, NotificationKind};
use app::states::RequestState;
use concierge::platform::clock::Clock;
use uuid::Uuid;

/// One sample a minute for VM `vm` from `from` to `to` minutes relative to the clock, at
/// `cpu` %.
async fn samples(w: &World, vm: Uuid, from: i32, to: i32, cpu: f32) {
    sqlx::query(
        "INSERT INTO metric_samples (subject, is_host, host_id, tenant_id, at, cpu_pct, mem_bytes)
         SELECT v.uuid, false, v.host_id, v.tenant_id, $2::timestamptz + make_interval(mins => m), $5, 1
         FROM vms v, generate_series($3, $4) m WHERE v.uuid = $1",
    )
    .bind(vm)
    .bind(w.app.clock.now())
    .bind(from)
    .bind(to)
    .bind(cpu)
    .execute(&w.app.db)
    .await
    .unwrap();
}

async fn vms(w: &World, c: &Client, count: &str, prefix: &str) -> Vec<(Uuid, String)> {
    let id = w.submit(c, "small", count, prefix).await.unwrap();
    w.wait_for(c, &id.to_string(), RequestState::Fulfilled)
        .await;
    sqlx::query_as::<_, (Uuid, Uuid)>(
        "SELECT uuid, host_id FROM vms WHERE request_id = $1 ORDER BY name",
    )
    .bind(id)
    .fetch_all(&w.app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(u, h)| (u, h.to_string()))
    .collect()
}

async fn told(c: &Client) -> Vec<Notification> {
    let all: Vec<Notification> = c.call_as("my_notifications", &[]).await.unwrap();
    all.into_iter()
        .filter(|n| n.kind == NotificationKind::Alert)
        .collect()
}

#[tokio::test]
async fn a_threshold_held_for_its_duration_fires_once_and_resolves_once() {
    let w = world_with(|c| c.sample_seconds = 0).await;
    let t = w.tenant.to_string();
    let (ann, boss) = w.ann_and_boss().await;
    let other = w.app.tenant("Globex").await;
    let (_, rival) = w
        .app
        .signed_in("rival@example.com", Some((other, "tenant_admin")))
        .await;
    w.set_policy(&boss, "5", "").await;
    let web = vms(&w, &ann, "1", "web").await[0].0;

    let rule = |threshold: &'static str, subject: &'static str| {
        vec![
            ("scope", t.clone()),
            ("name", "Hot CPU".to_string()),
            ("subject", subject.to_string()),
            ("metric", "cpu".to_string()),
            ("direction", "above".to_string()),
            ("threshold", threshold.to_string()),
            ("for_minutes", "10".to_string()),
            ("severity", "critical".to_string()),
        ]
    };
    let form = |r: &Vec<(&'static str, String)>| {
        r.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let call = |c: &Client, r: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let f = form(&r);
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.call("add_alert_rule", &refs).await
        }
    };
    assert_field_error(&call(&boss, rule("150", "vm")).await, "threshold");
    assert_field_error(&call(&boss, rule("80", "host")).await, "subject");
    assert!(matches!(
        call(&rival, rule("80", "vm")).await,
        Err((404, _))
    ));
    assert!(matches!(call(&ann, rule("80", "vm")).await, Err((403, _))));
    call(&boss, rule("80", "vm")).await.unwrap();

    // Three minutes above 80 %: not yet.
    samples(&w, web, -3, 0, 95.0).await;
    assert_eq!(w.app.state.alerter.tick().await.unwrap().fired, 0);
    // Twelve minutes: fires, once.
    samples(&w, web, -12, -4, 95.0).await;
    let tick = w.app.state.alerter.tick().await.unwrap();
    assert_eq!(tick.fired, 1, "{tick:?}");
    assert_eq!(w.app.state.alerter.tick().await.unwrap().fired, 0);
    let n = told(&boss).await;
    assert_eq!(n.len(), 1, "{n:?}");
    assert!(
        n[0].title.starts_with("[critical] web: Hot CPU"),
        "{}",
        n[0].title
    );
    assert!(n[0].link.starts_with("/vms/"), "{}", n[0].link);
    assert!(told(&rival).await.is_empty());
    let o: AlertsOverview = boss.call_as("alerts", &[]).await.unwrap();
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(
        (o.alerts[0].state.as_str(), o.alerts[0].severity.as_str()),
        ("firing", "critical")
    );
    let o: AlertsOverview = rival.call_as("alerts", &[]).await.unwrap();
    assert!(o.alerts.is_empty(), "another tenant sees nothing");
    assert!(matches!(ann.call("alerts", &[]).await, Err((403, _))));

    // One dip inside the window does not resolve it while the latest sample is still above;
    // back to 10 % resolves it, once.
    w.app.clock.advance(time::Duration::minutes(2));
    samples(&w, web, 0, 0, 50.0).await;
    samples(&w, web, -1, -1, 95.0).await;
    samples(&w, web, 1, 1, 95.0).await;
    w.app.clock.advance(time::Duration::minutes(1));
    assert_eq!(
        w.app.state.alerter.tick().await.unwrap(),
        concierge::alerts::Tick::default()
    );
    w.app.clock.advance(time::Duration::minutes(1));
    samples(&w, web, 0, 0, 10.0).await;
    let tick = w.app.state.alerter.tick().await.unwrap();
    assert_eq!(tick.resolved, 1, "{tick:?}");
    assert_eq!(w.app.state.alerter.tick().await.unwrap().resolved, 0);
    let n = told(&boss).await;
    assert_eq!(n.len(), 2);
    assert!(
        n[0].title.starts_with("Resolved: web: Hot CPU"),
        "{}",
        n[0].title
    );
    let o: AlertsOverview = boss.call_as("alerts", &[]).await.unwrap();
    assert_eq!(o.alerts[0].state, "resolved");
    assert!(o.alerts[0].resolved_at.is_some());
}

#[tokio::test]
async fn a_spike_is_an_anomaly_and_a_daily_cycle_is_not_and_faults_fire() {
    let w = world_with(|c| c.sample_seconds = 0).await;
    let (ann, boss) = w.ann_and_boss().await;
    w.set_policy(&boss, "5", "").await;
    let pair = vms(&w, &ann, "2", "cyc").await;
    // 15 days of a daily cycle: 10 % at night (00–07 UTC), 60 % by day. The last complete hour
    // follows it for cyc-1 and is turned upside down for cyc-2.
    let now = w.app.clock.now();
    for (i, (vm, _)) in pair.iter().enumerate() {
        sqlx::query(
            "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n, cpu_sum)
             SELECT 3600, v.uuid, b, false, v.host_id, v.tenant_id, 12, 12,
                    12 * CASE WHEN $3 AND b = date_trunc('hour', $2::timestamptz) - interval '1 hour'
                              THEN CASE WHEN extract(hour FROM b) < 8 THEN 95 ELSE 5 END
                              WHEN extract(hour FROM b) < 8 THEN 10 ELSE 60 END
             FROM vms v, generate_series(date_trunc('hour', $2::timestamptz) - interval '15 days',
                                         date_trunc('hour', $2::timestamptz) - interval '1 hour', interval '1 hour') b
             WHERE v.uuid = $1",
        )
        .bind(vm)
        .bind(now)
        .bind(i == 1)
        .execute(&w.app.db)
        .await
        .unwrap();
    }
    let tick = w.app.state.alerter.tick().await.unwrap();
    assert_eq!(tick.fired, 1, "{tick:?}");
    let (cyc1, host1) = &pair[0];
    let (cyc2, host2) = &pair[1];
    let on = |host: &String, vm: &Uuid| vec![("host_id", host.clone()), ("uuid", vm.to_string())];
    let get = |c: &Client, f: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.call_as::<Vec<Alert>>("vm_alerts", &refs).await.unwrap()
        }
    };
    let flagged = get(&ann, on(host2, cyc2)).await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0].kind, "anomaly");
    assert!(
        flagged[0].detail.contains("usually"),
        "{}",
        flagged[0].detail
    );
    assert!(
        get(&ann, on(host1, cyc1)).await.is_empty(),
        "a normal daily cycle is not flagged"
    );
    assert_eq!(told(&boss).await.len(), 1);
    // The unusual hour is marked on the VM's CPU chart (a second series, named in the
    // caption) and listed on the fleet dashboard; the normal VM's chart has no marks.
    let charts: Vec<app::fleet::ChartView> = ann
        .call_as(
            "vm_charts",
            &[
                ("host_id", host2.as_str()),
                ("uuid", &cyc2.to_string()),
                ("range", "7d"),
            ],
        )
        .await
        .unwrap();
    let marks = charts[0]
        .lines
        .iter()
        .find(|l| l.label == "Unusual CPU")
        .expect("marked");
    assert_eq!(marks.points.len(), 1, "{marks:?}");
    let hour = (now.unix_timestamp() / 3600 - 1) * 3600 * 1000;
    assert_eq!(marks.points[0].0, hour);
    assert!(
        charts[0].summary.contains("Unusual for this VM"),
        "{}",
        charts[0].summary
    );
    let plain: Vec<app::fleet::ChartView> = ann
        .call_as(
            "vm_charts",
            &[
                ("host_id", host1.as_str()),
                ("uuid", &cyc1.to_string()),
                ("range", "7d"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(plain[0].lines.len(), 1);
    let dash: app::fleet::FleetDashboard = w.fleet.call_as("fleet_dashboard", &[]).await.unwrap();
    assert_eq!(
        dash.anomalies.iter().map(|a| a.vm).collect::<Vec<_>>(),
        [*cyc2]
    );

    // Faults: a crashed domain and a host lost three times within the hour.
    let fleet_before = told(&w.fleet).await.len();
    sqlx::query("UPDATE domains SET state = 'crashed' WHERE uuid = $1")
        .bind(cyc1)
        .execute(&w.app.db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO host_state_changes (host_id, state, at) SELECT $1::uuid, 'lost', now() - make_interval(mins => m) FROM generate_series(1, 3) m")
        .bind(&w.host)
        .execute(&w.app.db)
        .await
        .unwrap();
    let tick = w.app.state.alerter.tick().await.unwrap();
    assert_eq!(tick.fired, 2, "{tick:?}");
    let crashed = get(&ann, on(host1, cyc1)).await;
    assert_eq!(
        (crashed[0].kind.as_str(), crashed[0].severity.as_str()),
        ("fault", "critical")
    );
    assert_eq!(crashed[0].title, "cyc-1 crashed");
    let fleet_told = told(&w.fleet).await;
    assert_eq!(fleet_told.len(), fleet_before + 2, "{fleet_told:?}");
    assert!(fleet_told
        .iter()
        .any(|n| n.title == "[warning] Host hv1 is flapping"));
    sqlx::query("UPDATE domains SET state = 'running' WHERE uuid = $1")
        .bind(cyc1)
        .execute(&w.app.db)
        .await
        .unwrap();
    assert_eq!(w.app.state.alerter.tick().await.unwrap().resolved, 1);
}

#[tokio::test]
async fn host_capacity_headroom_fires_after_its_duration_and_resolves() {
    let w = world_with(|c| c.sample_seconds = 0).await;
    let (ann, boss) = w.ann_and_boss().await;
    w.set_policy(&boss, "5", "").await;
    let (vm, host) = vms(&w, &ann, "1", "web").await.remove(0);
    // The simulated host has 256 GiB and 256 vCPUs after overcommit: one small VM (1 vCPU,
    // 1 GiB) leaves 99.6 % of each free, below a threshold of 99.9 %.
    let rule = [
        ("scope", "fleet"),
        ("name", "Room to place"),
        ("subject", "host"),
        ("metric", "headroom"),
        ("direction", "below"),
        ("threshold", "99.9"),
        ("for_minutes", "5"),
        ("severity", "warning"),
    ];
    let mut for_vms = rule;
    for_vms[2] = ("subject", "vm");
    assert_field_error(&w.fleet.call("add_alert_rule", &for_vms).await, "metric");
    w.fleet.call("add_alert_rule", &rule).await.unwrap();
    // Beyond for less than the duration: not yet; after it: fires once, to the fleet admins.
    assert_eq!(w.app.state.alerter.tick().await.unwrap().fired, 0);
    w.app.clock.advance(time::Duration::minutes(3));
    assert_eq!(w.app.state.alerter.tick().await.unwrap().fired, 0);
    w.app.clock.advance(time::Duration::minutes(3));
    let tick = w.app.state.alerter.tick().await.unwrap();
    assert_eq!(tick.fired, 1, "{tick:?}");
    assert_eq!(w.app.state.alerter.tick().await.unwrap().fired, 0);
    let n = told(&w.fleet).await;
    assert!(
        n.iter()
            .any(|n| n.title.starts_with("[warning] hv1: Room to place")
                && n.link == format!("/hosts/{host}")),
        "{n:?}"
    );
    assert!(told(&boss).await.is_empty(), "a host alert is the fleet's");
    let o: AlertsOverview = w.fleet.call_as("alerts", &[]).await.unwrap();
    assert!(
        o.alerts[0].detail.contains("memory 99.6 %"),
        "{:?}",
        o.alerts[0]
    );
    // The VM stops: its memory is free again, the alert resolves.
    ann.call(
        "vm_action",
        &[
            ("host_id", &host),
            ("uuid", &vm.to_string()),
            ("action", "force_off"),
        ],
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    loop {
        let tick = w.app.state.alerter.tick().await.unwrap();
        if tick.resolved == 1 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "never resolved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
