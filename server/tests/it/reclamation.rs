//! Reclamation rules on simulated metrics (hourly rollups written for simulated weeks) and the
//! manual clock: the dry run lists exactly the matching VMs with their evidence; enabled rules
//! propose once; keep suppresses; no answer means the tenant's action after the window; accept
//! acts at once; no VM of another tenant is touched; everything audited, quota = recount.

use crate::common::*;
use crate::provisioning::{world_with, World};
use app::notifications::{Notification, NotificationKind};
use app::reclamation::{Candidate, Preview, Proposal, ReclamationOverview};
use app::states::RequestState;
use concierge::platform::clock::Clock;
use std::time::Duration;
use uuid::Uuid;

/// Writes `days` days of hourly rollups ending at the clock's hour: CPU at `cpu` % of the
/// VM's vCPUs, except `busy` % at 03:00 (a nightly job); 1 KiB/s of disk and 0.5 of network.
async fn metrics(w: &World, vm: Uuid, days: i32, cpu: f64, busy: f64) {
    let now = w.app.clock.now();
    sqlx::query(
        "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n,
                                     cpu_sum, rd_sum, wr_sum, rx_sum, tx_sum)
         SELECT 3600, v.uuid, h, false, v.host_id, v.tenant_id, 12, 12,
                12 * CASE WHEN extract(hour FROM h) = 3 THEN $4 ELSE $3 END, 12 * 1024.0, 0, 12 * 512.0, 0
         FROM vms v, generate_series(date_trunc('hour', $2::timestamptz) - make_interval(days => $5),
                                     date_trunc('hour', $2::timestamptz) - interval '1 hour', interval '1 hour') h
         WHERE v.uuid = $1
         ON CONFLICT (resolution, subject, bucket) DO UPDATE SET cpu_sum = EXCLUDED.cpu_sum, rate_n = 12",
    )
    .bind(vm)
    .bind(now)
    .bind(cpu)
    .bind(busy)
    .bind(days)
    .execute(&w.app.db)
    .await
    .unwrap();
}

/// Waits until the inventory says the VM's domain is off.
async fn shut_off(w: &World, vm: Uuid) {
    let started = std::time::Instant::now();
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM domains WHERE uuid = $1")
            .bind(vm)
            .fetch_one(&w.app.db)
            .await
            .unwrap();
        if state == "shutoff" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{vm} never off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn vm_named(w: &World, name: &str) -> (Uuid, String) {
    let (uuid, host): (Uuid, Uuid) =
        sqlx::query_as("SELECT uuid, host_id FROM vms WHERE name = $1 AND deleted_at IS NULL")
            .bind(name)
            .fetch_one(&w.app.db)
            .await
            .unwrap();
    (uuid, host.to_string())
}

fn rule<'a>(
    scope: &'a str,
    kind: &'a str,
    days: &'a str,
    action: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("scope", scope),
        ("kind", kind),
        ("days", days),
        ("cpu_pct", "5"),
        ("io_kbps", "100"),
        ("net_kbps", "20"),
        ("share_pct", "90"),
        ("action", action),
        ("response_days", "3"),
    ]
}

async fn preview(c: &Client, form: &[(&str, &str)]) -> Vec<String> {
    let found: Preview = c.call_as("preview_reclamation_rule", form).await.unwrap();
    found.candidates.into_iter().map(|c| c.name).collect()
}

fn figures(c: &Candidate) -> Vec<(&str, &str)> {
    c.figures
        .iter()
        .map(|f| (f.label.as_str(), f.value.as_str()))
        .collect()
}

async fn audited(w: &World, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(&w.app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn rules_preview_propose_and_reclaim_only_what_they_should() {
    let w = world_with(|_| {}).await;
    let t = w.tenant.to_string();
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let (bob_id, bob) = w
        .app
        .signed_in("bob@example.com", Some((w.tenant, "requester")))
        .await;
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((w.tenant, "tenant_admin")))
        .await;
    w.set_policy(&boss, "5", "").await;
    // Globex gets the same template; its VM is idle too, and no Acme rule may touch it.
    sqlx::query("UPDATE templates SET all_tenants = true")
        .execute(&w.app.db)
        .await
        .unwrap();
    let globex = w.app.tenant("Globex").await;
    let g = globex.to_string();
    let (_, gina) = w
        .app
        .signed_in("gina@example.com", Some((globex, "requester")))
        .await;
    let (_, rival) = w
        .app
        .signed_in("rival@example.com", Some((globex, "tenant_admin")))
        .await;
    w.fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &g),
                ("vcpus", "10"),
                ("memory_gib", "10"),
                ("disk_gib", "100"),
                ("vms", "5"),
            ],
        )
        .await
        .unwrap();
    w.fleet
        .call(
            "set_policy",
            &[
                ("tenant_id", &g),
                ("auto_max_vcpus", "2"),
                ("auto_max_memory_gib", "4"),
                ("auto_max_count", "5"),
                ("auto_max_lease_days", "30"),
                ("expire_days", "7"),
                ("levels", ""),
            ],
        )
        .await
        .unwrap();

    let a = w.submit(&ann, "small", "4", "app").await.unwrap();
    let b = w.submit(&bob, "small", "1", "bobs").await.unwrap();
    let gx: Uuid = gina
        .call_as("submit_request", &w.form(&g, "small", "1", "gx"))
        .await
        .unwrap();
    w.wait_for(&ann, &a.to_string(), RequestState::Fulfilled)
        .await;
    w.wait_for(&bob, &b.to_string(), RequestState::Fulfilled)
        .await;
    w.wait_for(&gina, &gx.to_string(), RequestState::Fulfilled)
        .await;
    let (app1, _) = vm_named(&w, "app-1").await;
    let (app2, _) = vm_named(&w, "app-2").await;
    let (app3, _) = vm_named(&w, "app-3").await;
    let (app4, app4_host) = vm_named(&w, "app-4").await;
    let (bobs, _) = vm_named(&w, "bobs").await;
    let (gx1, _) = vm_named(&w, "gx").await;

    // app-1 idle but for a nightly hour (96 % of each day idle), app-2 busy, app-3 idle for
    // only 5 days, gx idle; app-4 powered off 40 days ago; Bob leaves Acme.
    metrics(&w, app1, 20, 1.0, 50.0).await;
    metrics(&w, app2, 20, 40.0, 40.0).await;
    metrics(&w, app3, 5, 1.0, 1.0).await;
    metrics(&w, gx1, 20, 1.0, 1.0).await;
    // The daily buckets with their hours, as the rollup writes them when a day completes.
    let now = w.app.clock.now();
    concierge::metering::metrics::roll_days(&w.app.state.pool, now - time::Duration::days(21), now)
        .await
        .unwrap();
    ann.call(
        "vm_action",
        &[
            ("host_id", &app4_host),
            ("uuid", &app4.to_string()),
            ("action", "force_off"),
        ],
    )
    .await
    .unwrap();
    shut_off(&w, app4).await;
    sqlx::query("UPDATE domain_state_history SET at = at - interval '40 days' WHERE uuid = $1")
        .bind(app4)
        .execute(&w.app.db)
        .await
        .unwrap();
    boss.call(
        "remove_member",
        &[("tenant_id", &t), ("user_id", &bob_id.to_string())],
    )
    .await
    .unwrap();

    // The dry runs: exactly the expected VMs, with evidence; nothing saved.
    let idle = rule(&t, "idle", "14", "stop");
    let dry: Preview = boss
        .call_as("preview_reclamation_rule", &idle)
        .await
        .unwrap();
    assert_eq!(
        (dry.rule.days.as_str(), dry.rule.action.as_str()),
        ("14", "stop")
    );
    let found: Vec<Candidate> = dry.candidates;
    assert_eq!(
        found.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["app-1"]
    );
    assert_eq!(found[0].daily_cpu.len(), 14, "{:?}", found[0].daily_cpu);
    assert!(
        found[0].daily_cpu.iter().all(|c| (2.9..3.2).contains(c)),
        "{:?}",
        found[0].daily_cpu
    );
    let figures = figures(&found[0]);
    assert!(
        figures.contains(&("Idle days (of 14)", "14")),
        "{figures:?}"
    );
    assert!(
        figures.contains(&("CPU, hourly peak", "50.0 %")),
        "{figures:?}"
    );
    // A stricter share (every hour idle) drops app-1 for its nightly hour.
    let mut strict = idle.clone();
    strict[6] = ("share_pct", "100");
    assert!(preview(&boss, &strict).await.is_empty());
    assert_eq!(
        preview(&boss, &rule(&t, "powered_off", "30", "delete")).await,
        ["app-4"]
    );
    assert!(preview(&boss, &rule(&t, "powered_off", "60", "delete"))
        .await
        .is_empty());
    assert_eq!(
        preview(&boss, &rule(&t, "orphaned", "1", "stop")).await,
        ["bobs"]
    );
    // The fleet default covers tenants without their own rule: both idle VMs.
    assert_eq!(
        preview(&w.fleet, &rule("fleet", "idle", "14", "stop")).await,
        ["app-1", "gx"]
    );
    // Bad input names its field; other tenants' admins and requesters may not.
    let mut bad = idle.clone();
    bad[2] = ("days", "0");
    assert_field_error(&boss.call("preview_reclamation_rule", &bad).await, "days");
    bad[2] = ("days", "14");
    bad[1] = ("kind", "haunted");
    assert_field_error(&boss.call("save_reclamation_rule", &bad).await, "kind");
    assert!(matches!(
        rival.call("preview_reclamation_rule", &idle).await,
        Err((404, _))
    ));
    assert!(matches!(
        ann.call("save_reclamation_rule", &idle).await,
        Err((403, _))
    ));
    assert!(matches!(
        boss.call(
            "save_reclamation_rule",
            &rule("fleet", "idle", "14", "stop")
        )
        .await,
        Err((403, _))
    ));
    let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM reclamation_rules")
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(saved, 0);

    // Enabled: one proposal each, to the owner, once however often it runs.
    let mut on = idle.clone();
    on.push(("enabled", "on"));
    boss.call("save_reclamation_rule", &on).await.unwrap();
    let mut off_rule = rule(&t, "powered_off", "30", "delete");
    off_rule.push(("enabled", "on"));
    boss.call("save_reclamation_rule", &off_rule).await.unwrap();
    let tick = w.app.state.reclaimer.tick().await.unwrap();
    assert_eq!(tick.proposed, 2, "{tick:?}");
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().proposed, 0);
    let mine: Vec<Proposal> = ann.call_as("my_reclamation_proposals", &[]).await.unwrap();
    let mut names: Vec<&str> = mine.iter().map(|p| p.vm_name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["app-1", "app-4"]);
    let told: Vec<Notification> = ann.call_as("my_notifications", &[]).await.unwrap();
    assert_eq!(
        told.iter()
            .filter(|n| n.kind == NotificationKind::Reclamation)
            .count(),
        2,
        "{told:?}"
    );
    assert!(rival
        .call_as::<Vec<Proposal>>("my_reclamation_proposals", &[])
        .await
        .unwrap()
        .is_empty());

    // Keep needs a reason, and then this kind of rule leaves app-1 alone.
    let p1 = mine
        .iter()
        .find(|p| p.vm_name == "app-1")
        .unwrap()
        .id
        .to_string();
    assert_field_error(
        &ann.call(
            "answer_reclamation_proposal",
            &[("id", &p1), ("answer", "keep"), ("reason", " ")],
        )
        .await,
        "reason",
    );
    assert!(matches!(
        gina.call(
            "answer_reclamation_proposal",
            &[("id", &p1), ("answer", "accept")]
        )
        .await,
        Err((404, _))
    ));
    ann.call(
        "answer_reclamation_proposal",
        &[("id", &p1), ("answer", "keep"), ("reason", "nightly batch")],
    )
    .await
    .unwrap();
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().proposed, 0);
    assert!(
        preview(&boss, &idle).await.is_empty(),
        "kept VMs are out of the dry run too"
    );

    // No answer on app-4: after the 3-day window it is deleted, its quota released.
    w.app.clock.advance(time::Duration::days(4));
    let tick = w.app.state.reclaimer.tick().await.unwrap();
    assert_eq!(tick.carried_out, 1, "{tick:?}");
    let started = std::time::Instant::now();
    loop {
        let deleted: bool =
            sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM vms WHERE uuid = $1")
                .bind(app4)
                .fetch_one(&w.app.db)
                .await
                .unwrap();
        if deleted {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "app-4 never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let phase: String = sqlx::query_scalar("SELECT phase FROM vms WHERE uuid = $1")
        .bind(app1)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(phase, "running", "the kept VM stays");

    // Orphaned VMs go to the tenant's admins, who accept: stopped at once, in its log.
    let mut orphan = rule(&t, "orphaned", "1", "stop");
    orphan.push(("enabled", "on"));
    // The clock moved 4 days: sessions were renewed by use, sign in again to be sure.
    let boss = w.app.client();
    boss.login("boss@example.com", PASSWORD).await.unwrap();
    boss.call("save_reclamation_rule", &orphan).await.unwrap();
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().proposed, 1);
    let told: Vec<Notification> = boss.call_as("my_notifications", &[]).await.unwrap();
    assert!(
        told.iter()
            .any(|n| n.kind == NotificationKind::Reclamation && n.title.starts_with("bobs")),
        "{told:?}"
    );
    let o: ReclamationOverview = boss.call_as("reclamation", &[]).await.unwrap();
    let p = o
        .proposals
        .iter()
        .find(|p| p.vm_name == "bobs" && p.state == "open")
        .unwrap();
    boss.call(
        "answer_reclamation_proposal",
        &[("id", &p.id.to_string()), ("answer", "accept")],
    )
    .await
    .unwrap();
    shut_off(&w, bobs).await;
    let logged: String = sqlx::query_scalar(
        "SELECT detail FROM domain_operations WHERE domain_uuid = $1 AND operation = 'force_off' ORDER BY id DESC LIMIT 1",
    )
    .bind(bobs)
    .fetch_one(&w.app.db)
    .await
    .unwrap();
    assert!(logged.starts_with("Reclaimed"), "{logged}");

    // Globex's VM was never touched; every step is audited; the report counts two; the quota
    // counters equal a recount.
    let gx_phase: String = sqlx::query_scalar("SELECT phase FROM vms WHERE uuid = $1")
        .bind(gx1)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(gx_phase, "running");
    let gx_proposals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reclamation_proposals WHERE tenant_id = $1")
            .bind(globex)
            .fetch_one(&w.app.db)
            .await
            .unwrap();
    assert_eq!(gx_proposals, 0);
    assert_eq!(audited(&w, "vm.reclaim.propose").await, 3);
    assert_eq!(audited(&w, "vm.reclaim.keep").await, 1);
    assert_eq!(audited(&w, "vm.reclaim.delete").await, 1);
    assert_eq!(audited(&w, "vm.reclaim.stop").await, 1);
    assert_eq!(audited(&w, "reclamation_rule.save").await, 3);
    let o: ReclamationOverview = boss.call_as("reclamation", &[]).await.unwrap();
    assert_eq!(
        o.report.iter().map(|m| m.vms).sum::<i64>(),
        2,
        "{:?}",
        o.report
    );
    // The tenant's manager reads the proposals and the report, and sets no rules.
    let (_, mia) = w
        .app
        .signed_in("mia@example.com", Some((w.tenant, "manager")))
        .await;
    let read: ReclamationOverview = mia.call_as("reclamation", &[]).await.unwrap();
    assert!(read.scopes.is_empty());
    assert_eq!(read.report.iter().map(|m| m.vms).sum::<i64>(), 2);
    assert!(read.proposals.iter().all(|p| p.tenant_name == "Acme"));
    assert!(matches!(
        mia.call("save_reclamation_rule", &orphan).await,
        Err((403, _))
    ));
    let (_, rob) = w
        .app
        .signed_in("rob@example.com", Some((w.tenant, "requester")))
        .await;
    assert!(matches!(rob.call("reclamation", &[]).await, Err((403, _))));
    let recount: app::provisioning::Recount = w
        .app
        .fleet_admin()
        .await
        .call_as("recount_quota", &[("tenant_id", &t)])
        .await
        .unwrap();
    assert!(recount.consistent, "{recount:?}");
}

/// Writes `days` days of hourly rollups ending at the clock's hour: CPU at `cpu` % of the
/// VM's vCPUs and `mem_mib` MiB in use at each hour's peak.
async fn sized_metrics(w: &World, vm: Uuid, days: i32, cpu: f64, mem_mib: i64) {
    sqlx::query(
        "INSERT INTO metric_rollups (resolution, subject, bucket, is_host, host_id, tenant_id, n, rate_n,
                                     cpu_sum, mem_max, mem_sum)
         SELECT 3600, v.uuid, h, false, v.host_id, v.tenant_id, 12, 12, 12 * $3, $4 * 1048576, 12.0 * $4 * 1048576
         FROM vms v, generate_series(date_trunc('hour', $2::timestamptz) - make_interval(days => $5),
                                     date_trunc('hour', $2::timestamptz) - interval '1 hour', interval '1 hour') h
         WHERE v.uuid = $1",
    )
    .bind(vm)
    .bind(w.app.clock.now())
    .bind(cpu)
    .bind(mem_mib)
    .bind(days)
    .execute(&w.app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn oversized_vms_are_shrunk_to_a_template_size_at_their_next_stop() {
    let w = world_with(|_| {}).await;
    let t = w.tenant.to_string();
    let (ann, boss) = w.ann_and_boss().await;
    boss.call(
        "set_policy",
        &[
            ("tenant_id", &t),
            ("auto_max_vcpus", "4"),
            ("auto_max_memory_gib", "8"),
            ("auto_max_count", "5"),
            ("auto_max_lease_days", "30"),
            ("expire_days", "7"),
            ("levels", ""),
        ],
    )
    .await
    .unwrap();
    // A rate card for the report: 0.01 a vCPU-hour, 0.005 a GiB-hour of memory.
    sqlx::query(
        "INSERT INTO rate_cards (currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from)
         VALUES ('EUR', 0.01, 0.005, 0.0001, now() - interval '1 year')",
    )
    .execute(&w.app.db)
    .await
    .unwrap();
    // The simulated pool holds one large VM.
    let r = w.submit(&ann, "large", "1", "big").await.unwrap();
    w.wait_for(&ann, &r.to_string(), RequestState::Fulfilled)
        .await;
    let (big1, big1_host) = vm_named(&w, "big").await;
    // 10 % of 4 vCPUs, 600 MiB of 8 GiB in use: small (1 vCPU, 1 GiB) holds it.
    sized_metrics(&w, big1, 15, 10.0, 600).await;

    let mut oversized = rule(&t, "oversized", "14", "");
    oversized[3] = ("cpu_pct", "25");
    oversized.push(("mem_pct", "80"));
    let dry: Preview = boss
        .call_as("preview_reclamation_rule", &oversized)
        .await
        .unwrap();
    assert_eq!(dry.rule.action, "shrink");
    assert_eq!(
        dry.candidates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["big"]
    );
    let figures = figures(&dry.candidates[0]);
    assert!(
        figures.contains(&("Proposed size", "small: 1 vCPU, 1.0 GiB")),
        "{figures:?}"
    );
    assert!(
        figures.contains(&("Memory in use, 95th percentile", "0.6 GiB of 8.0 GiB")),
        "{figures:?}"
    );
    // Stricter thresholds leave it out: CPU at 10 % is not below 5 %, 7 % of memory not below 5 %.
    let mut strict = oversized.clone();
    strict[3] = ("cpu_pct", "5");
    assert!(preview(&boss, &strict).await.is_empty());
    let mut strict = oversized.clone();
    *strict.last_mut().unwrap() = ("mem_pct", "5");
    assert!(preview(&boss, &strict).await.is_empty());
    // Over 30 days it has only 15 days of samples: no verdict.
    let mut longer = oversized.clone();
    longer[2] = ("days", "30");
    assert!(preview(&boss, &longer).await.is_empty());
    // A shrink is for oversized VMs only, and oversized VMs are only shrunk.
    let mut stop = oversized.clone();
    stop[7] = ("action", "stop");
    assert_field_error(&boss.call("save_reclamation_rule", &stop).await, "action");
    assert_field_error(
        &boss
            .call("save_reclamation_rule", &rule(&t, "idle", "14", "shrink"))
            .await,
        "action",
    );
    let mut bad = oversized.clone();
    *bad.last_mut().unwrap() = ("mem_pct", "120");
    assert_field_error(
        &boss.call("preview_reclamation_rule", &bad).await,
        "mem_pct",
    );

    oversized.push(("enabled", "on"));
    boss.call("save_reclamation_rule", &oversized)
        .await
        .unwrap();
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().proposed, 1);
    let mine: Vec<Proposal> = ann.call_as("my_reclamation_proposals", &[]).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].action, "shrink");
    // Accepted while running: nothing changes until the owner stops it.
    ann.call(
        "answer_reclamation_proposal",
        &[("id", &mine[0].id.to_string()), ("answer", "accept")],
    )
    .await
    .unwrap();
    let tick = w.app.state.reclaimer.tick().await.unwrap();
    assert_eq!((tick.proposed, tick.shrunk), (0, 0), "{tick:?}");
    let size: (i32, i64) = sqlx::query_as("SELECT vcpus, memory_mib FROM vms WHERE uuid = $1")
        .bind(big1)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(size, (4, 8192));
    ann.call(
        "vm_action",
        &[
            ("host_id", &big1_host),
            ("uuid", &big1.to_string()),
            ("action", "force_off"),
        ],
    )
    .await
    .unwrap();
    shut_off(&w, big1).await;
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().shrunk, 1);
    assert_eq!(w.app.state.reclaimer.tick().await.unwrap().shrunk, 0);
    let size: (i32, i64) = sqlx::query_as("SELECT vcpus, memory_mib FROM vms WHERE uuid = $1")
        .bind(big1)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(size, (1, 1024));
    // The hypervisor agrees: the domain's configuration was changed.
    let vm: app::fleet::VmDetail = ann
        .call_as(
            "get_vm",
            &[("host_id", &big1_host), ("uuid", &big1.to_string())],
        )
        .await
        .unwrap();
    assert_eq!(
        (vm.domain.vcpus, vm.domain.memory_kib),
        (1, 1024 * 1024),
        "{vm:?}"
    );
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM domain_operations WHERE domain_uuid = $1 AND operation = 'resize'",
    )
    .bind(big1)
    .fetch_one(&w.app.db)
    .await
    .unwrap();
    assert_eq!(logged, 1);
    assert_eq!(audited(&w, "vm.reclaim.shrink_scheduled").await, 1);
    assert_eq!(audited(&w, "vm.reclaim.shrink").await, 1);
    assert_eq!(audited(&w, "vm.resize").await, 1);
    let told: Vec<Notification> = ann.call_as("my_notifications", &[]).await.unwrap();
    assert!(
        told.iter().any(|n| n.title == "big was shrunk: reclaimed"),
        "{told:?}"
    );
    // The report: 3 vCPUs and 7 GiB freed, 730 h × (3 × 0.01 + 7 × 0.005) = 47.45 EUR a month.
    let o: ReclamationOverview = boss.call_as("reclamation", &[]).await.unwrap();
    assert_eq!(o.report.len(), 1, "{:?}", o.report);
    let m = &o.report[0];
    assert_eq!((m.vms, m.vcpus, m.memory_mib, m.disk_gib), (1, 3, 7168, 0));
    assert!(
        (m.monthly_cost.unwrap() - 47.45).abs() < 0.01,
        "{:?}",
        m.monthly_cost
    );
    assert_eq!(m.currency.as_deref(), Some("EUR"));
    let recount: app::provisioning::Recount = w
        .fleet
        .call_as("recount_quota", &[("tenant_id", &t)])
        .await
        .unwrap();
    assert!(recount.consistent, "{recount:?}");
}
