//! Hosts and inventory against libvirt's test driver.

use crate::common::*;
use app::fleet::{DiskInfo, DomainSummary, HostDetail, HostSummary};
use app::provisioning::ManagedVm;
use app::Page;
use concierge::hypervisor::simulation;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn registration_validates_and_reports_libvirts_error() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let before = app.snapshot().await;
    let r = admin
        .call(
            "register_host",
            &[("name", "Bad Name"), ("uri", "http://example.com")],
        )
        .await;
    assert!(assert_field_error(&r, "name").contains("lowercase"));
    assert!(assert_field_error(&r, "uri").contains("qemu:///system"));
    let r = admin
        .call(
            "register_host",
            &[("name", "nowhere"), ("uri", "test:///does/not/exist.xml")],
        )
        .await;
    assert!(
        assert_field_error(&r, "uri").starts_with("Simulated hosts are test:///default"),
        "{r:?}"
    );
    let r = admin
        .call(
            "register_host",
            &[("name", "closed"), ("uri", "qemu+tcp://127.0.0.1:1/system")],
        )
        .await;
    assert!(
        assert_field_error(&r, "uri").starts_with("Could not connect: "),
        "{r:?}"
    );
    assert_eq!(before, app.snapshot().await);
    assert_eq!(app.scalar_i64("SELECT count(*) FROM hosts").await, 0);
}

#[tokio::test]
async fn a_simulated_fleet_is_inventoried_and_unmanaged_domains_are_drift() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let dir = tempdir();
    let uri = simulation::write_node(&dir, "sim-a", 30).unwrap();
    let host: HostSummary = admin
        .call_as(
            "register_host",
            &[
                ("name", "sim-a"),
                ("uri", &uri),
                ("labels", "ssd, rack-1"),
                ("schedulable", "true"),
            ],
        )
        .await
        .unwrap();
    let id = host.id.to_string();
    assert_eq!(host.labels, ["ssd", "rack-1"]);
    assert_eq!(host.cpus, Some(64));
    let detail_ok = || async {
        let d: HostDetail = admin
            .call_as("get_host", &[("host_id", &id)])
            .await
            .unwrap();
        d.domains.total == 30 && d.host.state == "connected"
    };
    wait_for("the first reconcile", detail_ok).await;
    admin
        .call("reconcile_host", &[("host_id", &id)])
        .await
        .unwrap();
    let d: HostDetail = admin
        .call_as(
            "get_host",
            &[("host_id", &id), ("search", "vm-2"), ("page", "1")],
        )
        .await
        .unwrap();
    // vm-2, vm-20 … vm-29
    assert_eq!(d.domains.total, 11);
    assert_eq!(d.pools[0].name, "sim-a-pool");
    assert!(d.pools[0].capacity > 0);
    assert_eq!(d.networks[0].name, "sim-a-net");
    assert_eq!(d.host.running, 30 - 10 - 3); // 10 shut off, 3 paused (i%7==6 and i%3!=2)
    type Row = (String, String, i32, i64, sqlx::types::Json<Vec<DiskInfo>>);
    // The stored column holds the disks as the inventory serialized them (`DiskInfo`).
    let states: Vec<Row> = sqlx::query_as(
        "SELECT name, state, vcpus, memory_kib, disks FROM domains WHERE name IN ('sim-a-vm-0', 'sim-a-vm-2', 'sim-a-vm-6') ORDER BY name",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(states[0].1, "running");
    assert_eq!(states[1].1, "shutoff");
    assert_eq!(states[2].1, "paused");
    assert_eq!((states[0].2, states[0].3), (1, 512 * 1024));
    assert_eq!(states[0].4[0].format.as_deref(), Some("qcow2"));
    let drift: Page<DomainSummary> = admin.call_as("list_drift", &[]).await.unwrap();
    assert_eq!(
        drift.total, 30,
        "nothing was created by the portal: all 30 are drift"
    );
    let actions = app.audit_actions().await;
    assert!(
        actions.contains(&"host.register".to_string())
            && actions.contains(&"host.reconcile".to_string())
    );
    // A duplicate registration is refused on the field.
    let r = admin
        .call("register_host", &[("name", "sim-a"), ("uri", &uri)])
        .await;
    assert_eq!(
        assert_field_error(&r, "name"),
        "A host with that name is already registered."
    );
    app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn lifecycle_events_update_rows_at_once_and_vanished_domains_are_marked_missing() {
    // test:///default is one shared in-process host: a second connection acts on it and our
    // subscription sees the events.
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let host: HostSummary = admin
        .call_as(
            "register_host",
            &[("name", "default"), ("uri", "test:///default")],
        )
        .await
        .unwrap();
    let id = host.id;
    let db = app.db.clone();
    wait_for("the default domain", || {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM domains WHERE name = 'test'")
                .fetch_one(&db)
                .await
                .unwrap()
                == 1
        }
    })
    .await;

    let name = format!("ev-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let xml = format!("<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>");
    let other = tokio::task::spawn_blocking(move || {
        concierge::hypervisor::events::ensure_event_loop();
        let conn = virt::connect::Connect::open(Some("test:///default")).unwrap();
        let dom = conn.define_domain_xml(&xml).unwrap();
        (conn, dom)
    })
    .await
    .unwrap();
    let state_of = |n: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM domains WHERE host_id = $1 AND name = $2 AND missing_since IS NULL")
                .bind(id)
                .bind(n)
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    };
    let n = name.clone();
    wait_for("the defined domain to appear", || {
        let f = state_of(n.clone());
        async move { f.await.as_deref() == Some("shutoff") }
    })
    .await;
    let (conn, dom) = other;
    let dom = tokio::task::spawn_blocking(move || {
        dom.create().unwrap();
        dom
    })
    .await
    .unwrap();
    let n = name.clone();
    wait_for("running by event", || {
        let f = state_of(n.clone());
        async move { f.await.as_deref() == Some("running") }
    })
    .await;
    let reason: Option<String> =
        sqlx::query_scalar("SELECT state_reason FROM domains WHERE name = $1")
            .bind(&name)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(reason.as_deref(), Some("started"));
    tokio::task::spawn_blocking(move || {
        dom.destroy().unwrap();
        dom.undefine().unwrap();
        concierge::hypervisor::events::close(conn);
    })
    .await
    .unwrap();
    let db2 = app.db.clone();
    let n = name.clone();
    wait_for("the undefined domain to be marked missing", || {
        let db = db2.clone();
        let n = n.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT missing_since IS NOT NULL FROM domains WHERE name = $1",
            )
            .bind(n)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    })
    .await;
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM domains WHERE name = '{name}'"
        ))
        .await,
        1,
        "kept, not deleted"
    );
    app.state.hypervisors.stop_all();
}

fn tempdir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("concierge-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Outside testing: registering `test:///path/to/any/file` echoed the file's first line in
/// libvirt's parse error. Only `test:///default` and files inside the configured directory of
/// simulated fleets are opened, and a bad file's content is never quoted.
#[tokio::test]
async fn simulated_hosts_open_only_files_in_their_directory_and_never_echo_content() {
    let allowed = tempdir();
    let outside = std::env::temp_dir().join(format!(
        "concierge-secret-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&outside, "TOP-SECRET-LINE\nmore\n").unwrap();
    let inside = allowed.join("not-a-node.xml");
    std::fs::write(&inside, "TOP-SECRET-LINE <node\n").unwrap();
    let allowed_dir = allowed.clone();
    let app = spawn_app_with(move |c| c.simulated_fleets_dir = Some(allowed_dir)).await;
    let admin = app.fleet_admin().await;
    let before = app.snapshot().await;
    for (uri, starts) in [
        ("test:///etc/passwd".to_string(), "Simulated hosts are"),
        (
            format!("test://{}", outside.display()),
            "Simulated hosts are",
        ),
        (
            format!(
                "test://{}/../{}",
                allowed.display(),
                outside.file_name().unwrap().to_string_lossy()
            ),
            "Simulated hosts are",
        ),
        (
            format!("test://{}", inside.display()),
            "Could not connect: that file is not",
        ),
    ] {
        let r = admin
            .call("register_host", &[("name", "sneaky"), ("uri", &uri)])
            .await;
        let message = assert_field_error(&r, "uri");
        assert!(message.starts_with(starts), "{uri}: {message}");
        assert!(!format!("{r:?}").contains("TOP-SECRET"), "{uri}: {r:?}");
        assert!(!format!("{r:?}").contains("root:"), "{uri}: {r:?}");
    }
    assert_eq!(before, app.snapshot().await);
    // A real node file inside the directory, and the built-in default, are fine.
    let uri = simulation::write_node(&allowed, "sim-ok", 2).unwrap();
    admin
        .call("register_host", &[("name", "sim-ok"), ("uri", &uri)])
        .await
        .expect("a node file inside the directory");
    admin
        .call(
            "register_host",
            &[("name", "sim-default"), ("uri", "test:///default")],
        )
        .await
        .expect("test:///default");
    // With no directory configured (production's default), only test:///default.
    let strict = spawn_app_with(|c| c.simulated_fleets_dir = None).await;
    let admin = strict.fleet_admin().await;
    let r = admin
        .call("register_host", &[("name", "sim-ok"), ("uri", &uri)])
        .await;
    assert!(assert_field_error(&r, "uri").starts_with("Simulated hosts are"));
    let _ = std::fs::remove_file(&outside);
}

/// Follows a list's Next links from page 1 to the end, then its Previous links back, and
/// checks every page against the same page asked for by number (items named by `key`).
async fn walk<T: DeserializeOwned>(
    client: &Client,
    endpoint: &str,
    form: &[(&str, &str)],
    key: fn(&T) -> String,
) -> Vec<Vec<String>> {
    let names = |page: &Page<T>| -> Vec<String> { page.items.iter().map(key).collect() };
    let call = |extra: Vec<(&'static str, String)>| {
        let mut f: Vec<(&str, String)> = form.iter().map(|(k, v)| (*k, v.to_string())).collect();
        f.extend(extra);
        async move {
            let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.call_as::<Page<T>>(endpoint, &f).await.unwrap()
        }
    };
    let mut page = call(vec![]).await;
    let mut forwards = vec![names(&page)];
    assert!(page.before.is_none(), "page 1 has no Previous cursor");
    while let Some(after) = page.after.clone() {
        let n = page.page + 1;
        page = call(vec![("page", n.to_string()), ("after", after)]).await;
        let by_number = call(vec![("page", n.to_string())]).await;
        assert_eq!(
            names(&page),
            names(&by_number),
            "page {n} by cursor and by number"
        );
        forwards.push(names(&page));
    }
    let mut n = forwards.len();
    while n > 2 {
        let before = page.before.clone().unwrap();
        n -= 1;
        page = call(vec![("page", n.to_string()), ("before", before)]).await;
        assert_eq!(names(&page), forwards[n - 1], "page {n} read backwards");
    }
    forwards
}

#[tokio::test]
async fn deep_pages_follow_cursors_and_match_pages_by_number() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let dir = tempdir();
    // 2 hosts × 60 domains: 120 drift domains, three pages of 50.
    for host in ["sim-a", "sim-b"] {
        let uri = simulation::write_node(&dir, host, 60).unwrap();
        admin
            .call("register_host", &[("name", host), ("uri", &uri)])
            .await
            .unwrap();
    }
    wait_for("the inventory", || async {
        app.scalar_i64("SELECT count(*) FROM domains").await == 120
    })
    .await;
    let pages = walk(&admin, "list_drift", &[], |d: &DomainSummary| {
        d.name.clone()
    })
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [50, 50, 20]);
    let all: Vec<&String> = pages.iter().flatten().collect();
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 120, "no domain twice, none left out");

    // The VM list, in each order: 60 portal VMs whose leases and creation times tie in
    // groups, so the later key columns decide.
    let tenant = app.tenant("Paging").await;
    let owner = app
        .user("pager@example.com", Some((tenant, "requester")))
        .await;
    sqlx::query(
        "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib, phase,
                          lease_ends_at, created_at, updated_at)
         SELECT gen_random_uuid(), $1, $2, format('page-%s', lpad(g::text, 2, '0')), 1, 512, 10,
                CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'pending' END,
                now() + (g % 4) * interval '1 day', now() - (g % 5) * interval '1 hour', now()
         FROM generate_series(1, 60) g",
    )
    .bind(tenant)
    .bind(owner)
    .execute(&app.db)
    .await
    .unwrap();
    for sort in ["name", "lease", "created", "state"] {
        let pages = walk(
            &admin,
            "my_vms",
            &[("all", "true"), ("sort", sort)],
            |v: &ManagedVm| v.uuid.to_string(),
        )
        .await;
        let mut seen: Vec<&String> = pages.iter().flatten().collect();
        assert_eq!(seen.len(), 60, "sorted by {sort}");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 60, "no VM twice when sorted by {sort}");
    }

    // A damaged link is refused on its field, and changes nothing.
    let r = admin
        .call("list_drift", &[("page", "2"), ("after", "[\"x\"]")])
        .await;
    assert!(assert_field_error(&r, "after").contains("start again from the first page"));
}

#[tokio::test]
async fn an_older_observation_never_replaces_a_newer_state() {
    use concierge::hypervisor::inventory::{apply_events, upsert_domains, DomainFacts};
    use time::{Duration, OffsetDateTime};
    use uuid::Uuid;
    let app = spawn_app().await;
    let host = Uuid::new_v4();
    // Events are applied for hosts whose lease the writer holds, under that lease: here a
    // replica that does not exist, so no host actor of this server reads the host meanwhile.
    let fence = concierge::platform::cluster::Fence {
        replica: Uuid::new_v4(),
        epoch: 7,
    };
    sqlx::query(
        "WITH h AS (INSERT INTO hosts (id, name, uri, cpus) VALUES ($1, 'h1', 'test:///default', 4) RETURNING id)
         INSERT INTO host_leases (host_id, owner, epoch, expires_at) SELECT id, $2, 7, now() + interval '1 hour' FROM h",
    )
    .bind(host)
    .bind(fence.replica)
    .execute(&app.db)
    .await
    .unwrap();
    let t0 = OffsetDateTime::now_utc();
    let facts = |state: &'static str, at: OffsetDateTime| DomainFacts {
        uuid: Uuid::from_u128(7),
        name: "vm".into(),
        state,
        vcpus: 1,
        memory_kib: 1024,
        disks: Vec::new(),
        nics: Vec::new(),
        observed_at: at,
    };
    let upsert = |f: DomainFacts| {
        let pool = app.state.pool.clone();
        async move {
            let mut tx =
                concierge::platform::db::begin(&pool, concierge::platform::db::Scope::fleet())
                    .await
                    .unwrap();
            upsert_domains(&mut tx, host, &[&f]).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM domains WHERE uuid = $1")
            .bind(Uuid::from_u128(7))
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    // The provisioner's read after the start...
    upsert(facts("running", t0 + Duration::seconds(2))).await;
    // ...then a refresh that had read the domain before the start lands: ignored.
    upsert(facts("shutoff", t0 + Duration::seconds(1))).await;
    assert_eq!(state().await, "running");
    // An event older than the last read is not applied (and is reported as not applied, so
    // the host re-reads the domain); a newer one is.
    let old = apply_events(
        &app.state.pool,
        &[(host, Uuid::from_u128(7), "shutoff", "stopped", t0)],
        |_| Some(fence),
    )
    .await
    .unwrap();
    assert!(old.is_empty());
    assert_eq!(state().await, "running");
    let new = apply_events(
        &app.state.pool,
        &[(
            host,
            Uuid::from_u128(7),
            "paused",
            "suspended",
            t0 + Duration::seconds(3),
        )],
        |_| Some(fence),
    )
    .await
    .unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(state().await, "paused");
    // A reconcile that reads after the event wins again.
    upsert(facts("running", t0 + Duration::seconds(4))).await;
    assert_eq!(state().await, "running");
}

#[tokio::test]
async fn hosts_below_the_fleets_minimum_versions_are_flagged_and_counted() {
    // Whatever libvirt this machine runs is below 99.0.0.
    let app = spawn_app_with(|c| c.min_libvirt_version = 99_000_000).await;
    let admin = app.fleet_admin().await;
    let dir = tempdir();
    let uri = simulation::write_node(&dir, "sim-old", 1).unwrap();
    let host: HostSummary = admin
        .call_as(
            "register_host",
            &[("name", "sim-old"), ("uri", &uri), ("schedulable", "true")],
        )
        .await
        .unwrap();
    let listed: Vec<HostSummary> = admin.call_as("list_hosts", &[]).await.unwrap();
    let h = listed.iter().find(|h| h.id == host.id).unwrap();
    assert!(h.needs_update);
    let why = h.update_reason.clone().unwrap();
    assert!(
        why.starts_with("libvirt ") && why.ends_with("(minimum 99.0.0)"),
        "{why}"
    );
    assert!(h.lib_version.is_some() && h.hv_version.is_some(), "{h:?}");
    let d: app::fleet::FleetDashboard = admin.call_as("fleet_dashboard", &[]).await.unwrap();
    assert_eq!(d.outdated_hosts.len(), 1);
    assert_eq!(d.outdated_hosts[0].name, "sim-old");
    assert_eq!(d.minimum_versions, "libvirt 99.0.0, QEMU 6.2.0");
    let page = admin.get("/dashboard").await.text().await.unwrap();
    assert!(page.contains("Hosts needing an update: 1"));

    // At the default minimum this machine's libvirt passes.
    let current = spawn_app().await;
    let admin = current.fleet_admin().await;
    let uri = simulation::write_node(&dir, "sim-new", 1).unwrap();
    admin
        .call("register_host", &[("name", "sim-new"), ("uri", &uri)])
        .await
        .unwrap();
    let d: app::fleet::FleetDashboard = admin.call_as("fleet_dashboard", &[]).await.unwrap();
    assert!(d.outdated_hosts.is_empty(), "{:?}", d.outdated_hosts);
    assert_eq!(concierge::config::version("8.0"), Ok(8_000_000));
    assert_eq!(concierge::config::version("10.2.3"), Ok(10_002_003));
    assert!(concierge::config::version("8.x").is_err());
}
