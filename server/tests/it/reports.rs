//! Usage rollup, showback reports with rate cards, CSV export and their authorization.

use crate::common::*;
use app::reports::{RateCard, Report, ReportRow};
use time::macros::datetime;
use time::OffsetDateTime;
use uuid::Uuid;

#[allow(clippy::too_many_arguments)]
async fn vm(
    app: &TestApp,
    tenant: Uuid,
    owner: Uuid,
    name: &str,
    created: OffsetDateTime,
    vcpus: i32,
    memory_mib: i64,
    disk_gib: i64,
) -> Uuid {
    let uuid = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib, phase, lease_ends_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $8, $8)",
    )
    .bind(uuid)
    .bind(tenant)
    .bind(owner)
    .bind(name)
    .bind(vcpus)
    .bind(memory_mib)
    .bind(disk_gib)
    .bind(created)
    .execute(&app.db)
    .await
    .unwrap();
    uuid
}

async fn state(app: &TestApp, uuid: Uuid, at: OffsetDateTime, s: &str) {
    sqlx::query(
        "INSERT INTO domain_state_history (uuid, host_id, state, at) VALUES ($1, $2, $3, $4)",
    )
    .bind(uuid)
    .bind(Uuid::nil())
    .bind(s)
    .bind(at)
    .execute(&app.db)
    .await
    .unwrap();
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test]
async fn usage_from_history_priced_by_the_rate_card_of_each_hour() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let a = app.tenant("Alpha").await;
    let b = app.tenant("Beta").await;
    let (ann, _) = app
        .signed_in("ann@example.com", Some((a, "requester")))
        .await;
    let (_, mona) = app
        .signed_in("mona@example.com", Some((a, "manager")))
        .await;
    let (_, rick) = app
        .signed_in("rick@example.com", Some((a, "requester")))
        .await;
    let (bob, bert) = app
        .signed_in("bert@example.com", Some((b, "manager")))
        .await;

    // Alpha's VM: created 1 Oct 12:00 with 2 vCPUs, 4 GiB, 10 GiB; resized at midnight to
    // 4 vCPUs, 8 GiB; deleted 2 Oct 12:00. Running 12:00–18:00 and 06:00–12:00.
    let v1 = vm(
        &app,
        a,
        ann,
        "alpha-web",
        datetime!(2026-10-01 12:00 UTC),
        2,
        4096,
        10,
    )
    .await;
    sqlx::query("UPDATE vms SET vcpus = 4, memory_mib = 8192, updated_at = $2 WHERE uuid = $1")
        .bind(v1)
        .bind(datetime!(2026-10-02 00:00 UTC))
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE vms SET deleted_at = $2, phase = 'deleted' WHERE uuid = $1")
        .bind(v1)
        .bind(datetime!(2026-10-02 12:00 UTC))
        .execute(&app.db)
        .await
        .unwrap();
    state(&app, v1, datetime!(2026-10-01 12:00 UTC), "running").await;
    state(&app, v1, datetime!(2026-10-01 18:00 UTC), "shutoff").await;
    state(&app, v1, datetime!(2026-10-02 06:00 UTC), "running").await;
    state(&app, v1, datetime!(2026-10-02 12:00 UTC), "gone").await;
    // Beta's VM: 1 vCPU, 1 GiB, 5 GiB from 1 Oct 00:00 on, never started.
    vm(
        &app,
        b,
        bob,
        "beta-db",
        datetime!(2026-10-01 00:00 UTC),
        1,
        1024,
        5,
    )
    .await;

    // Rates: a general card for 1 Oct, a dearer one from 2 Oct on.
    let add = |cur: &'static str,
               v: &'static str,
               m: &'static str,
               d: &'static str,
               from: &'static str,
               to: &'static str| {
        let fleet = &fleet;
        async move {
            fleet
                .call(
                    "add_rate_card",
                    &[
                        ("currency", cur),
                        ("vcpu_hour", v),
                        ("memory_gib_hour", m),
                        ("disk_gib_hour", d),
                        ("valid_from", from),
                        ("valid_to", to),
                    ],
                )
                .await
        }
    };
    add("EUR", "0.01", "0.001", "0.0001", "2026-10-01", "2026-10-02")
        .await
        .unwrap();
    add("eur", "0.02", "0.002", "0.0002", "2026-10-02", "")
        .await
        .unwrap();

    let before = app.scalar_i64("SELECT count(*) FROM rate_cards").await;
    let r = add("EUR", "-1", "0.001", "x", "2026-13-01", "").await;
    assert_field_error(&r, "vcpu_hour");
    assert_field_error(&r, "disk_gib_hour");
    assert_field_error(&r, "valid_from");
    assert_field_error(
        &add("EU", "1", "1", "1", "2026-10-01", "").await,
        "currency",
    );
    assert_field_error(
        &add("EUR", "1", "1", "1", "2026-10-05", "2026-10-01").await,
        "valid_to",
    );
    assert_refused(
        &mona
            .call(
                "add_rate_card",
                &[
                    ("currency", "EUR"),
                    ("vcpu_hour", "1"),
                    ("memory_gib_hour", "1"),
                    ("disk_gib_hour", "1"),
                    ("valid_from", "2026-10-01"),
                ],
            )
            .await,
        "a manager sets prices",
    );
    assert_eq!(
        before,
        app.scalar_i64("SELECT count(*) FROM rate_cards").await
    );

    // Roll up to 5 Oct; a second run adds nothing (incremental).
    let hours = concierge::metering::usage::rollup(
        &app.state.pool,
        datetime!(2026-10-05 00:30 UTC),
        24 * 31,
    )
    .await
    .unwrap();
    assert_eq!(hours, 96);
    assert_eq!(
        concierge::metering::usage::rollup(
            &app.state.pool,
            datetime!(2026-10-05 00:30 UTC),
            24 * 31
        )
        .await
        .unwrap(),
        0
    );

    let report =
        |c: &Client, tenant: String, from: &'static str, to: &'static str, group: &'static str| {
            let c = c.clone();
            async move {
                c.call_as::<Report>(
                    "usage_report",
                    &[
                        ("tenant_id", &tenant),
                        ("from", from),
                        ("to", to),
                        ("group_by", group),
                    ],
                )
                .await
            }
        };
    let r = report(&mona, String::new(), "2026-10-01", "2026-10-02", "vm")
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 1, "a manager sees their tenant only: {r:#?}");
    let row = &r.rows[0];
    assert_eq!(row.label, "alpha-web");
    assert!(close(row.vcpu_hours, 72.0), "{row:?}");
    assert!(close(row.memory_gib_hours, 144.0), "{row:?}");
    assert!(close(row.disk_gib_hours, 240.0), "{row:?}");
    assert!(close(row.powered_on_hours, 12.0), "{row:?}");
    // 1 Oct: 24×0.01 + 48×0.001 + 120×0.0001 = 0.30; 2 Oct: 48×0.02 + 96×0.002 + 120×0.0002 = 1.176.
    assert!(close(row.cost, 1.476), "{row:?}");
    assert_eq!(r.currency, "EUR");

    // Fleet view by tenant: totals are the sum of their rows.
    let r = report(&fleet, String::new(), "2026-10-01", "2026-10-02", "tenant")
        .await
        .unwrap();
    assert_eq!(r.rows.len(), 2);
    type Figure = fn(&ReportRow) -> f64;
    let figures: [(&str, Figure); 5] = [
        ("vcpu_hours", |x| x.vcpu_hours),
        ("memory_gib_hours", |x| x.memory_gib_hours),
        ("disk_gib_hours", |x| x.disk_gib_hours),
        ("powered_on_hours", |x| x.powered_on_hours),
        ("cost", |x| x.cost),
    ];
    for (k, figure) in figures {
        let sum: f64 = r.rows.iter().map(figure).sum();
        assert!(close(sum, figure(&r.total)), "{k}: {r:#?}");
    }
    let beta = r.rows.iter().find(|x| x.label == "Beta").unwrap();
    assert!(close(beta.vcpu_hours, 48.0));
    assert!(close(beta.powered_on_hours, 0.0));
    // The next two days compare with these.
    let r = report(&fleet, b.to_string(), "2026-10-03", "2026-10-04", "user")
        .await
        .unwrap();
    let row = &r.rows[0];
    assert_eq!(row.label, "bert@example.com");
    assert!(row.previous_cost > 0.0);
    assert_eq!(r.previous_from, "2026-10-01");

    // Bad input is named; other tenants and requesters are refused.
    assert_field_error(
        &report(&mona, String::new(), "2026-10-05", "2026-10-01", "vm").await,
        "to",
    );
    assert_field_error(
        &report(&mona, String::new(), "2020-01-01", "2026-10-01", "vm").await,
        "to",
    );
    assert_field_error(
        &report(&mona, String::new(), "yesterday", "", "vm").await,
        "from",
    );
    assert_field_error(
        &report(&mona, String::new(), "", "", "planet").await,
        "group_by",
    );
    assert_field_error(
        &report(&mona, b.to_string(), "", "", "vm").await,
        "tenant_id",
    );
    assert_field_error(
        &report(&mona, Uuid::new_v4().to_string(), "", "", "vm").await,
        "tenant_id",
    );
    assert_refused(
        &report(&rick, String::new(), "", "", "vm").await,
        "a requester",
    );
    let r = report(&bert, String::new(), "2026-10-01", "2026-10-02", "vm")
        .await
        .unwrap();
    assert!(r.rows.iter().all(|x| x.label == "beta-db"), "{r:#?}");

    // CSV export: same rows, a header, dot decimals, ISO dates.
    let res = mona
        .http
        .get(format!(
            "{}/reports/usage.csv?from=2026-10-01&to=2026-10-02&group_by=vm",
            mona.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let body = res.text().await.unwrap();
    let mut lines = body.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("group,key,label,from,to,vcpu_hours"));
    let first = lines.next().unwrap();
    assert!(
        first.contains(
            ",alpha-web,2026-10-01,2026-10-02,72.0000,144.0000,240.0000,12.0000,1.48,EUR,"
        ),
        "{first}"
    );
    let res = rick
        .http
        .get(format!("{}/reports/usage.csv", rick.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let anon = app.client();
    let res = anon
        .http
        .get(format!("{}/reports/usage.csv", anon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let actions = app.audit_actions().await;
    assert!(actions.iter().any(|a| a == "rate_card.create"));
}

#[tokio::test]
async fn whole_months_are_read_from_monthly_totals_with_the_same_result() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let a = app.tenant("Alpha").await;
    let (ann, _) = app
        .signed_in("ann@example.com", Some((a, "requester")))
        .await;
    // Running from 1 Sep to 15 Oct: September is a whole month with one price.
    let v = vm(
        &app,
        a,
        ann,
        "steady",
        datetime!(2026-09-01 00:00 UTC),
        2,
        1024,
        10,
    )
    .await;
    state(&app, v, datetime!(2026-09-01 00:00 UTC), "running").await;
    sqlx::query(
        "INSERT INTO rate_cards (currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from)
         VALUES ('EUR', 0.01, 0.005, 0.0001, '2026-09-01')",
    )
    .execute(&app.db)
    .await
    .unwrap();
    concierge::metering::usage::rollup(&app.state.pool, datetime!(2026-10-15 00:30 UTC), 24 * 60)
        .await
        .unwrap();
    // The monthly row holds exactly the sum of September's hours.
    let (monthly, hourly): (f64, f64) = sqlx::query_as(
        "SELECT (SELECT sum(vcpu_hours) FROM usage_monthly WHERE month = '2026-09-01'),
                (SELECT sum(vcpu_hours) FROM usage_hourly WHERE hour >= '2026-09-01' AND hour < '2026-10-01')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(
        close(monthly, 1440.0) && close(hourly, 1440.0),
        "{monthly} {hourly}"
    );
    // September alone (monthly row) and 1 Sep–14 Oct (September monthly + October hours).
    let r = fleet
        .call_as::<Report>(
            "usage_report",
            &[
                ("from", "2026-09-01"),
                ("to", "2026-09-30"),
                ("group_by", "vm"),
            ],
        )
        .await
        .unwrap();
    let row = &r.rows[0];
    assert!(close(row.vcpu_hours, 1440.0), "{row:?}");
    assert!(close(row.powered_on_hours, 720.0), "{row:?}");
    // 1440×0.01 + 720×0.005 + 7200×0.0001
    assert!(close(row.cost, 18.72), "{row:?}");
    let r = fleet
        .call_as::<Report>(
            "usage_report",
            &[
                ("from", "2026-09-01"),
                ("to", "2026-10-14"),
                ("group_by", "tenant"),
            ],
        )
        .await
        .unwrap();
    let row = &r.rows[0];
    assert!(close(row.vcpu_hours, 2.0 * 24.0 * 44.0), "{row:?}");
    assert!(close(row.cost, 18.72 * 44.0 / 30.0), "{row:?}");
}

/// Outside testing: dates near year ±9999 crashed the report ("overflow adding duration to
/// date") in the server function and the CSV route; rate cards listed templates offered only
/// to other tenants.
#[tokio::test]
async fn extreme_dates_are_field_errors_and_rate_cards_stay_within_the_tenant() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let a = app.tenant("Alpha").await;
    let b = app.tenant("Beta").await;
    let (_, mona) = app
        .signed_in("mona@example.com", Some((a, "manager")))
        .await;
    for (from, to, field) in [
        ("9999-12-01", "9999-12-31", "from"),
        ("2026-01-01", "9999-12-31", "to"),
        ("-9999-01-01", "2026-01-01", "from"),
        ("1999-12-31", "2000-01-05", "from"),
    ] {
        let r = mona
            .call(
                "usage_report",
                &[("from", from), ("to", to), ("group_by", "tenant")],
            )
            .await;
        let message = assert_field_error(&r, field);
        assert!(
            message.contains("between 2000-01-01 and 2199-12-31") || message.contains("YYYY-MM-DD"),
            "{from}..{to}: {message}"
        );
        let res = mona
            .http
            .get(format!(
                "{}/reports/usage.csv?from={from}&to={to}&group_by=tenant",
                mona.base
            ))
            .send()
            .await
            .expect("the CSV route answers instead of dropping the connection");
        assert_eq!(res.status(), 422, "{from}..{to}");
    }
    let before = app.snapshot().await;
    let r = fleet
        .call(
            "add_rate_card",
            &[
                ("currency", "EUR"),
                ("vcpu_hour", "1"),
                ("memory_gib_hour", "1"),
                ("disk_gib_hour", "1"),
                ("valid_from", "9999-12-31"),
            ],
        )
        .await;
    assert!(assert_field_error(&r, "valid_from").contains("2199-12-31"));
    assert_eq!(before, app.snapshot().await);

    // Rate cards: the general one, and those of templates offered to Alpha; never the names of
    // templates only Beta gets.
    for (name, all, tenants) in [
        ("Shared image", true, vec![]),
        ("Alpha image", false, vec![a]),
        ("Beta secret project", false, vec![b]),
    ] {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO templates (name, os, sizes, default_lease_days, max_lease_days, all_tenants, tenant_ids)
             VALUES ($1, 'Linux', '[{\"name\":\"s\",\"vcpus\":1,\"memory_mib\":1024,\"disk_gib\":1}]', 1, 1, $2, $3)
             RETURNING id",
        )
        .bind(name)
        .bind(all)
        .bind(&tenants)
        .fetch_one(&app.db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO rate_cards (template_id, currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from) VALUES ($1, 'EUR', 1, 1, 1, now())")
            .bind(id)
            .execute(&app.db)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO rate_cards (currency, vcpu_hour, memory_gib_hour, disk_gib_hour, valid_from) VALUES ('EUR', 1, 1, 1, now())")
        .execute(&app.db)
        .await
        .unwrap();
    let names = |v: Vec<RateCard>| {
        let mut n: Vec<String> = v
            .into_iter()
            .map(|c| c.template_name.unwrap_or_else(|| "(general)".into()))
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(mona.call_as("list_rate_cards", &[]).await.unwrap()),
        ["(general)", "Alpha image", "Shared image"]
    );
    assert_eq!(
        names(fleet.call_as("list_rate_cards", &[]).await.unwrap()),
        [
            "(general)",
            "Alpha image",
            "Beta secret project",
            "Shared image"
        ]
    );
}

#[tokio::test]
async fn a_rate_card_can_be_ended_and_the_page_knows_which_cards_are_in_force() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let a = app.tenant("Alpha").await;
    let (_, mona) = app
        .signed_in("mona@example.com", Some((a, "manager")))
        .await;
    let id: Uuid = fleet
        .call_as(
            "add_rate_card",
            &[
                ("currency", "EUR"),
                ("vcpu_hour", "0.01"),
                ("memory_gib_hour", "0.001"),
                ("disk_gib_hour", "0.0001"),
                ("valid_from", "2026-01-01"),
            ],
        )
        .await
        .unwrap();
    let id = id.to_string();
    let cards: Vec<RateCard> = fleet.call_as("list_rate_cards", &[]).await.unwrap();
    assert!(cards[0].in_force, "{cards:?}");
    // Field errors change nothing; managers cannot end cards.
    let before = app.snapshot().await;
    for (to, why) in [
        ("2025-12-31", "before the start"),
        ("2026-02-01", "in the past: hours already priced"),
        ("someday", "not a date"),
    ] {
        let r = fleet
            .call("end_rate_card", &[("id", &id), ("valid_to", to)])
            .await;
        assert_field_error(&r, "valid_to");
        assert_eq!(before, app.snapshot().await, "{why}");
    }
    assert_refused(
        &mona
            .call("end_rate_card", &[("id", &id), ("valid_to", "2026-02-01")])
            .await,
        "a manager ends a card",
    );
    // From the day after tomorrow on, the card no longer applies; until then it does.
    let end = (app.state.clock.now() + time::Duration::days(2))
        .date()
        .to_string();
    fleet
        .call("end_rate_card", &[("id", &id), ("valid_to", &end)])
        .await
        .unwrap();
    let cards: Vec<RateCard> = fleet.call_as("list_rate_cards", &[]).await.unwrap();
    assert_eq!(cards[0].valid_to.as_deref(), Some(end.as_str()));
    assert!(cards[0].in_force);
    assert!(app
        .audit_actions()
        .await
        .iter()
        .any(|x| x == "rate_card.end"));
}

/// Capacity runway from simulated usage (hourly usage rows for 60 days): a tenant growing
/// half a vCPU a day towards a 100-vCPU quota runs out in about 121 days (±5 %); a flat one
/// does not within a year; only the tenant's managers and admins (and fleet admins) see it.
#[tokio::test]
async fn capacity_runway_follows_the_trend_of_daily_peaks() {
    use app::reports::Runway;
    use concierge::platform::clock::Clock;
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let growing = app.tenant("Growing").await;
    let flat = app.tenant("Flat").await;
    let (_, manager) = app
        .signed_in("mia@example.com", Some((growing, "manager")))
        .await;
    let (_, requester) = app
        .signed_in("rob@example.com", Some((growing, "requester")))
        .await;
    for t in [growing, flat] {
        fleet
            .call(
                "set_quota",
                &[
                    ("tenant_id", &t.to_string()),
                    ("vcpus", "100"),
                    ("memory_gib", "1000"),
                    ("disk_gib", "10000"),
                    ("vms", "100"),
                ],
            )
            .await
            .unwrap();
    }
    let now = app.clock.now();
    sqlx::query(
        "INSERT INTO usage_hourly (vm_uuid, hour, tenant_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
         SELECT v, h, t, CASE WHEN t = $2 THEN 10 + 0.5 * floor(extract(epoch FROM h - ($1::timestamptz - interval '60 days')) / 86400)
                              ELSE 20 + (extract(hour FROM h)::int % 2) END, 4, 20, 1
         FROM (VALUES ($2::uuid, gen_random_uuid()), ($3::uuid, gen_random_uuid())) AS x(t, v),
              generate_series(date_trunc('hour', $1::timestamptz) - interval '60 days',
                              date_trunc('hour', $1::timestamptz) - interval '1 hour', interval '1 hour') h",
    )
    .bind(now)
    .bind(growing)
    .bind(flat)
    .execute(&app.db)
    .await
    .unwrap();
    let rs: Vec<Runway> = manager
        .call_as("capacity_runway", &[("tenant_id", &growing.to_string())])
        .await
        .unwrap();
    let vcpus = rs.iter().find(|r| r.resource == "vCPUs").unwrap();
    let days = vcpus.days.expect("a runway");
    assert!(
        (days - 121.0).abs() <= 121.0 * 0.05,
        "{days}: {}",
        vcpus.summary
    );
    assert!(vcpus.days_low.unwrap() <= days && days <= vcpus.days_high.unwrap());
    assert!(
        vcpus.summary.starts_with("Runs out in about"),
        "{}",
        vcpus.summary
    );
    let memory = rs.iter().find(|r| r.resource == "memory").unwrap();
    assert!(memory.days.is_none() && memory.summary.starts_with("No exhaustion within a year"));
    let rs: Vec<Runway> = fleet
        .call_as("capacity_runway", &[("tenant_id", &flat.to_string())])
        .await
        .unwrap();
    assert!(rs.iter().all(|r| r.days.is_none()), "{rs:?}");
    assert!(
        rs[0].summary.starts_with("No exhaustion within a year"),
        "{}",
        rs[0].summary
    );
    // Requesters read no reports; the fleet's runway is the fleet admins'.
    assert!(matches!(
        requester
            .call("capacity_runway", &[("tenant_id", &growing.to_string())])
            .await,
        Err((403, _))
    ));
    assert!(matches!(
        manager.call("capacity_runway", &[]).await,
        Err((403, _))
    ));
    let fleet_rs: Vec<Runway> = fleet.call_as("capacity_runway", &[]).await.unwrap();
    let allocated = fleet_rs
        .iter()
        .find(|r| r.resource.starts_with("vCPUs allocated"))
        .unwrap();
    assert!(allocated.points.len() >= 60, "{allocated:?}");
    assert!((allocated.slope_per_day - 0.5).abs() < 0.01);
}

#[tokio::test]
async fn hosts_have_vcpu_and_pool_space_runways() {
    use app::reports::Runway;
    use concierge::platform::clock::Clock;
    let w = crate::provisioning::world_with(|_| {}).await;
    let (ann, boss) = w.ann_and_boss().await;
    w.set_policy(&boss, "5", "").await;
    let r = w.submit(&ann, "small", "1", "app").await.unwrap();
    w.wait_for(&ann, &r.to_string(), app::states::RequestState::Fulfilled)
        .await;
    let now = w.app.clock.now();
    // 60 days of the host's VM growing 0.5 vCPU a day from 10, and a pool "fast" on the host
    // filling 1 GiB a day from 10 GiB of 100 GiB.
    sqlx::query(
        "INSERT INTO usage_hourly (vm_uuid, hour, tenant_id, vcpu_hours, memory_gib_hours, disk_gib_hours, powered_on_hours)
         SELECT v.uuid, h, v.tenant_id, 10 + 0.5 * floor(extract(epoch FROM h - ($1::timestamptz - interval '60 days')) / 86400), 1, 10, 1
         FROM vms v, generate_series(date_trunc('hour', $1::timestamptz) - interval '60 days',
                                     date_trunc('hour', $1::timestamptz) - interval '1 hour', interval '1 hour') h
         WHERE v.deleted_at IS NULL
         ON CONFLICT DO NOTHING",
    )
    .bind(now)
    .execute(&w.app.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO storage_pool_daily (host_id, name, day, allocation_max, capacity)
         SELECT $1::uuid, 'fast', ($2::timestamptz - make_interval(days => 60 - d))::date,
                (10 + d) * 1073741824::int8, 100 * 1073741824::int8
         FROM generate_series(0, 59) d",
    )
    .bind(&w.host)
    .bind(now)
    .execute(&w.app.db)
    .await
    .unwrap();
    let rs: Vec<Runway> = w.fleet.call_as("capacity_runway", &[]).await.unwrap();
    let find = |subject: &str, resource: &str| {
        rs.iter()
            .find(|r| r.subject == subject && r.resource == resource)
            .unwrap_or_else(|| panic!("{subject} {resource}: {rs:?}"))
    };
    let vcpus = find("hv1", "vCPUs allocated (after overcommit)");
    assert!(vcpus.points.len() >= 60, "{vcpus:?}");
    assert!((vcpus.slope_per_day - 0.5).abs() < 0.01, "{vcpus:?}");
    // Level on day 59 (from 90 days back) ≈ 69 GiB: 31 GiB left at 1 GiB a day, from today
    // (a day on) ≈ 30 days.
    let pool = find("hv1 · fast", "pool space");
    assert!((pool.slope_per_day - 1.0).abs() < 0.01, "{pool:?}");
    let days = pool.days.expect("runs out");
    assert!(
        (days - 30.0).abs() <= 30.0 * 0.1,
        "{days}: {}",
        pool.summary
    );
    assert!((pool.capacity - 100.0).abs() < 0.01);
    let fleet_pool = find("Fleet", "pool space");
    assert!(fleet_pool.capacity > 0.0);
}
