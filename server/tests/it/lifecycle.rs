//! VM lifecycle operations on libvirt's test driver: every action, who may run it, and what
//! is recorded.

use crate::common::*;
use app::console::ConsoleTicket;
use app::fleet::{ChartUnit, ChartView, DomainSummary, HostDetail, HostSummary, VmDetail};
use app::live::LiveEvent;
use app::Page;
use concierge::hypervisor::simulation;
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Fleet {
    app: TestApp,
    host: String,
    tenant_a: Uuid,
    fleet: Client,
    owner: Client,
    other: Client,
    admin_a: Client,
    req_b: Client,
}

async fn domain(app: &TestApp, name: &str) -> (String, String, bool) {
    sqlx::query_as(
        "SELECT uuid::text, state, missing_since IS NOT NULL FROM domains WHERE name = $1",
    )
    .bind(name)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn wait_state(app: &TestApp, name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, state, _) = domain(app, name).await;
        if state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {state}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn setup() -> Fleet {
    let app = spawn_app().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let fleet = app.fleet_admin().await;
    let (_, owner) = app
        .signed_in("owner@example.com", Some((a, "requester")))
        .await;
    let (_, other) = app
        .signed_in("other@example.com", Some((a, "requester")))
        .await;
    let (_, admin_a) = app
        .signed_in("admin-a@example.com", Some((a, "tenant_admin")))
        .await;
    let (_, req_b) = app
        .signed_in("req-b@example.com", Some((b, "requester")))
        .await;
    let dir = std::env::temp_dir().join(format!("concierge-lc-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = simulation::write_node(&dir, "lc", 4).unwrap();
    let host: HostSummary = fleet
        .call_as("register_host", &[("name", "lc"), ("uri", &uri)])
        .await
        .unwrap();
    let host = host.id.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.scalar_i64("SELECT count(*) FROM domains").await < 4 {
        assert!(Instant::now() < deadline, "inventory never arrived");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (vm0, _, _) = domain(&app, "lc-vm-0").await;
    fleet
        .call(
            "adopt_vm",
            &[
                ("host_id", &host),
                ("uuid", &vm0),
                ("tenant_id", &a.to_string()),
                ("owner_email", "owner@example.com"),
            ],
        )
        .await
        .unwrap();
    Fleet {
        app,
        host,
        tenant_a: a,
        fleet,
        owner,
        other,
        admin_a,
        req_b,
    }
}

async fn act(c: &Client, host: &str, uuid: &str, action: &str) -> CallResult {
    c.call(
        "vm_action",
        &[("host_id", host), ("uuid", uuid), ("action", action)],
    )
    .await
}

#[tokio::test]
async fn owners_tenant_admins_and_fleet_admins_run_lifecycle_actions_others_cannot() {
    let f = setup().await;
    let (vm0, state, _) = domain(&f.app, "lc-vm-0").await;
    assert_eq!(state, "running");
    let anonymous = f.app.client();
    for (who, c) in [
        ("anonymous", &anonymous),
        ("other requester of A", &f.other),
        ("requester of B", &f.req_b),
    ] {
        let before = f.app.snapshot().await;
        let ops = f
            .app
            .scalar_i64("SELECT count(*) FROM domain_operations")
            .await;
        assert_refused(&act(c, &f.host, &vm0, "suspend").await, who);
        assert_refused(
            &c.call("get_vm", &[("host_id", &f.host), ("uuid", &vm0)])
                .await,
            who,
        );
        assert_eq!(before, f.app.snapshot().await, "{who}");
        assert_eq!(
            ops,
            f.app
                .scalar_i64("SELECT count(*) FROM domain_operations")
                .await,
            "{who}"
        );
        assert_eq!(domain(&f.app, "lc-vm-0").await.1, "running", "{who}");
    }
    // Owner, then the tenant admin, then the fleet admin.
    act(&f.owner, &f.host, &vm0, "suspend").await.unwrap();
    wait_state(&f.app, "lc-vm-0", "paused").await;
    act(&f.admin_a, &f.host, &vm0, "resume").await.unwrap();
    wait_state(&f.app, "lc-vm-0", "running").await;
    act(&f.fleet, &f.host, &vm0, "reboot").await.unwrap();
    let vm: VmDetail = f
        .owner
        .call_as("get_vm", &[("host_id", &f.host), ("uuid", &vm0)])
        .await
        .unwrap();
    assert_eq!(vm.domain.owner_email.as_deref(), Some("owner@example.com"));
    assert_eq!(vm.disks[0].format.as_deref(), Some("qcow2"));
    let ops: Vec<String> = vm
        .operations
        .iter()
        .map(|o| format!("{}:{}", o.operation, o.status))
        .collect();
    assert_eq!(
        ops,
        ["reboot:succeeded", "resume:succeeded", "suspend:succeeded"]
    );
    let audited: i64 = f
        .app
        .scalar_i64(&format!(
            "SELECT count(*) FROM audit_log WHERE action = 'vm.action' AND tenant_id = '{}'",
            f.tenant_a
        ))
        .await;
    assert_eq!(audited, 3);

    // Unmanaged domains are the fleet admins' alone.
    let (vm1, _, _) = domain(&f.app, "lc-vm-1").await;
    assert_refused(
        &act(&f.admin_a, &f.host, &vm1, "force_off").await,
        "tenant admin on drift",
    );
    act(&f.fleet, &f.host, &vm1, "force_off").await.unwrap();
    wait_state(&f.app, "lc-vm-1", "shutoff").await;
}

#[tokio::test]
async fn every_action_works_and_delete_needs_the_typed_name() {
    let f = setup().await;
    let (vm0, _, _) = domain(&f.app, "lc-vm-0").await;
    for (action, then) in [
        ("shutdown", "shutoff"),
        ("start", "running"),
        ("suspend", "paused"),
        ("resume", "running"),
        ("force_off", "shutoff"),
        ("start", "running"),
    ] {
        let r = act(&f.owner, &f.host, &vm0, action).await;
        assert!(r.is_ok(), "{action}: {r:?}");
        wait_state(&f.app, "lc-vm-0", then).await;
    }
    // libvirt's refusal is reported, and recorded as failed.
    let r = act(&f.owner, &f.host, &vm0, "resume").await;
    assert!(
        matches!(&r, Err((409, app::error::AppError::Conflict(m))) if m.starts_with("libvirt refused")),
        "{r:?}"
    );
    let failed = f
        .app
        .scalar_i64(
            "SELECT count(*) FROM domain_operations WHERE status = 'failed' AND error IS NOT NULL",
        )
        .await;
    assert_eq!(failed, 1);
    let r = act(&f.owner, &f.host, &vm0, "explode").await;
    assert_field_error(&r, "action");
    let before = f.app.snapshot().await;
    let r = f
        .owner
        .call(
            "vm_action",
            &[
                ("host_id", &f.host),
                ("uuid", &vm0),
                ("action", "delete"),
                ("confirm", "wrong"),
            ],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "confirm"),
        "Type the VM's name, lc-vm-0, to confirm."
    );
    assert_eq!(before, f.app.snapshot().await);
    f.owner
        .call(
            "vm_action",
            &[
                ("host_id", &f.host),
                ("uuid", &vm0),
                ("action", "delete"),
                ("confirm", "lc-vm-0"),
            ],
        )
        .await
        .unwrap();
    let (_, _, missing) = domain(&f.app, "lc-vm-0").await;
    assert!(missing, "a deleted domain is kept, marked missing");
    let r = act(&f.owner, &f.host, &vm0, "start").await;
    assert!(matches!(r, Err((409, _))), "{r:?}");
}

/// Console tickets follow the lifecycle rule: owner, tenant admin and fleet admin get one;
/// anyone else who names an existing VM is told 403, and nothing is stored for them.
#[tokio::test]
async fn console_tickets_go_to_those_who_may_act_on_the_vm() {
    let f = setup().await;
    let (vm0, _, _) = domain(&f.app, "lc-vm-0").await;
    let ticket = |c: &Client, kind: &'static str| {
        let (host, vm0) = (f.host.clone(), vm0.clone());
        let c = c.clone();
        async move {
            c.call_as::<ConsoleTicket>(
                "open_console",
                &[("host_id", &host), ("uuid", &vm0), ("kind", kind)],
            )
            .await
        }
    };
    let anonymous = f.app.client();
    assert!(matches!(ticket(&anonymous, "serial").await, Err((401, _))));
    for (who, c) in [
        ("other requester of A", &f.other),
        ("requester of B", &f.req_b),
    ] {
        let r = ticket(c, "serial").await;
        assert!(matches!(r, Err((403, _))), "{who}: {r:?}");
    }
    assert_eq!(
        f.app
            .scalar_i64("SELECT count(*) FROM console_sessions")
            .await,
        0
    );
    let r = ticket(&f.owner, "bogus").await;
    assert_field_error(&r, "kind");
    for c in [&f.owner, &f.admin_a, &f.fleet] {
        let t = ticket(c, "serial").await.unwrap();
        assert!(t.url.contains("/console/ws"), "{t:?}");
    }
    assert_eq!(
        f.app
            .scalar_i64("SELECT count(*) FROM console_sessions")
            .await,
        3
    );
}

#[tokio::test]
async fn adoption_needs_a_member_owner_and_only_fleet_admins() {
    let f = setup().await;
    let (vm2, _, _) = domain(&f.app, "lc-vm-2").await;
    let t = f.tenant_a.to_string();
    let form = |email: &'static str| {
        vec![
            ("host_id", f.host.clone()),
            ("uuid", vm2.clone()),
            ("tenant_id", t.clone()),
            ("owner_email", email.to_string()),
        ]
    };
    for c in [&f.admin_a, &f.owner] {
        let body = form("owner@example.com");
        let body: Vec<(&str, &str)> = body.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_refused(&c.call("adopt_vm", &body).await, "adopt by non-fleet");
    }
    let body = form("req-b@example.com");
    let body: Vec<(&str, &str)> = body.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = f.fleet.call("adopt_vm", &body).await;
    assert_eq!(
        assert_field_error(&r, "owner_email"),
        "The owner must be an active member of that tenant."
    );
    let drift_before = f
        .fleet
        .call_as::<Page<DomainSummary>>("list_drift", &[])
        .await
        .unwrap()
        .total;
    let body = form("other@example.com");
    let body: Vec<(&str, &str)> = body.iter().map(|(k, v)| (*k, v.as_str())).collect();
    f.fleet.call("adopt_vm", &body).await.unwrap();
    let drift_after = f
        .fleet
        .call_as::<Page<DomainSummary>>("list_drift", &[])
        .await
        .unwrap()
        .total;
    assert_eq!(drift_after, drift_before - 1);
    let r = f.fleet.call("adopt_vm", &body).await;
    assert!(matches!(r, Err((409, _))), "{r:?}");
    assert!(f
        .other
        .call("get_vm", &[("host_id", &f.host), ("uuid", &vm2)])
        .await
        .is_ok());
}

/// Reads server-sent events from `/live`.
struct Sse {
    res: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(c: &Client) -> Sse {
        let res = c
            .http
            .get(format!("{}/live", c.base))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        Sse {
            res,
            buf: String::new(),
        }
    }

    /// The next event's data within `within`, skipping keep-alive comments.
    async fn next(&mut self, within: Duration) -> Option<LiveEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) {
                    return Some(serde_json::from_str(data.trim()).unwrap());
                }
                continue;
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.res.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }
}

#[tokio::test]
async fn live_updates_reach_only_those_who_may_see_them() {
    let f = setup().await;
    let (vm0, _, _) = domain(&f.app, "lc-vm-0").await;
    let mut owner = Sse::open(&f.owner).await;
    let mut admin_a = Sse::open(&f.admin_a).await;
    let mut other = Sse::open(&f.other).await;
    let mut req_b = Sse::open(&f.req_b).await;
    let anon = f.app.client();
    let res = anon
        .http
        .get(format!("{}/live", anon.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Let the subscriptions settle before the change.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    act(&f.fleet, &f.host, &vm0, "suspend").await.unwrap();
    for (who, sse) in [("owner", &mut owner), ("tenant admin", &mut admin_a)] {
        let ev = sse
            .next(Duration::from_secs(1))
            .await
            .unwrap_or_else(|| panic!("{who} got no event within 1 s"));
        assert_eq!(ev.kind, "domain");
        assert_eq!(ev.uuid, Some(vm0.parse().unwrap()));
        assert_eq!(ev.state.as_deref(), Some("paused"));
    }
    eprintln!(
        "measure: change -> event on the page: {:?}",
        started.elapsed()
    );
    assert!(
        other.next(Duration::from_millis(1500)).await.is_none(),
        "another requester"
    );
    assert!(
        req_b.next(Duration::from_millis(100)).await.is_none(),
        "another tenant"
    );
    f.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn charts_are_scoped_validated_and_the_sampler_writes_host_samples() {
    let f = setup().await;
    let (vm0, _, _) = domain(&f.app, "lc-vm-0").await;
    let args = |range: &str| {
        vec![
            ("host_id", f.host.clone()),
            ("uuid", vm0.clone()),
            ("range", range.to_string()),
        ]
    };
    let call = |c: &Client, range: &str| {
        let a = args(range);
        let c = c.clone();
        async move {
            let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.call_as::<Vec<ChartView>>("vm_charts", &pairs).await
        }
    };
    // The owner, their tenant admin and fleet admins see the VM's four charts.
    for c in [&f.owner, &f.admin_a, &f.fleet] {
        let charts = call(c, "7d").await.expect("charts");
        let titles: Vec<&str> = charts.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["CPU", "Memory", "Disk", "Network"]);
        let first = &charts[0];
        assert_eq!(first.unit, ChartUnit::Percent);
        assert_eq!(first.lines[0].label, "CPU");
        assert!(first.to_ms - first.from_ms == 7 * 86_400_000);
        assert!(first.summary.starts_with("CPU: "));
    }
    // Another requester of the same tenant and another tenant's user do not.
    assert_refused(&call(&f.other, "7d").await, "another requester's VM charts");
    assert_refused(&call(&f.req_b, "7d").await, "another tenant's VM charts");
    // A range the picker does not offer is a field error.
    assert_field_error(&call(&f.owner, "2w").await, "range");
    // Fleet charts are for fleet admins.
    let fleet: Vec<ChartView> = f
        .fleet
        .call_as("fleet_charts", &[("range", "6h")])
        .await
        .unwrap();
    assert_eq!(fleet.len(), 3);
    assert_refused(
        &f.owner.call("fleet_charts", &[("range", "6h")]).await,
        "fleet charts",
    );
    assert_field_error(
        &f.fleet.call("fleet_charts", &[("range", "forever")]).await,
        "range",
    );
    // The hosts list is filtered, sorted and paginated on the server.
    let host_page = |form: &'static [(&'static str, &'static str)]| {
        let c = f.fleet.clone();
        async move {
            c.call_as::<Page<HostSummary>>("host_page", form)
                .await
                .unwrap()
        }
    };
    let hosts = host_page(&[("search", "lc")]).await;
    assert_eq!(hosts.total, 1);
    assert_eq!(hosts.items[0].name, "lc");
    let none = host_page(&[("search", "nope")]).await;
    assert_eq!(none.total, 0);
    let lost = host_page(&[("state", "lost")]).await;
    assert_eq!(lost.total, 0);
    let fullest = host_page(&[("sort", "memory")]).await;
    assert_eq!(fullest.total, 1);
    assert_field_error(
        &f.fleet.call("host_page", &[("sort", "price")]).await,
        "sort",
    );
    assert_field_error(
        &f.fleet.call("host_page", &[("state", "on fire")]).await,
        "state",
    );
    // The host's sampler ran at connect: one host sample counting its running domains.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = f
            .app
            .scalar_i64("SELECT count(*) FROM metric_samples WHERE is_host")
            .await;
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no host sample arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = f
        .app
        .scalar_i64("SELECT count(*) FROM domains WHERE state = 'running'")
        .await;
    let vms = f
        .app
        .scalar_i64("SELECT vms::int8 FROM metric_samples WHERE is_host ORDER BY at LIMIT 1")
        .await;
    assert_eq!(vms, running);
    let _ = f.tenant_a;
}

#[tokio::test]
async fn a_shutdown_is_recorded_when_the_guest_is_off_not_when_it_was_asked() {
    let f = setup().await;
    let (vm0, _, _) = domain(&f.app, "lc-vm-0").await;
    act(&f.owner, &f.host, &vm0, "shutdown").await.unwrap();
    wait_state(&f.app, "lc-vm-0", "shutoff").await;
    // The test driver's guest obeys at once: the watch records that it shut down itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, detail): (String, Option<String>) = loop {
        let row: (String, Option<String>) = sqlx::query_as(
            "SELECT status, detail FROM domain_operations WHERE domain_uuid = $1::uuid AND operation = 'shutdown'",
        )
        .bind(&vm0)
        .fetch_one(&f.app.db)
        .await
        .unwrap();
        if row.0 != "running" || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, "succeeded");
    assert_eq!(detail.as_deref(), Some("The guest shut down."));
    // The page shows the outcome.
    let vm: VmDetail = f
        .owner
        .call_as("get_vm", &[("host_id", &f.host), ("uuid", &vm0)])
        .await
        .unwrap();
    assert_eq!(
        vm.operations[0].detail.as_deref(),
        Some("The guest shut down.")
    );
}

#[tokio::test]
async fn a_domain_that_vanished_is_listed_apart_and_a_fleet_admin_can_forget_it() {
    let f = setup().await;
    let (vm1, _, _) = domain(&f.app, "lc-vm-1").await;
    let host_id: Uuid = f.host.parse().unwrap();
    // Still on its host: cannot be forgotten.
    let r = f
        .fleet
        .call("forget_domain", &[("host_id", &f.host), ("uuid", &vm1)])
        .await;
    assert!(matches!(&r, Err((409, _))), "{r:?}");
    // Removed behind the portal's back.
    f.app
        .state
        .hypervisors
        .call(host_id, |conn| {
            let d = conn.lookup_domain_by_name("lc-vm-1")?;
            let _ = d.destroy();
            d.undefine()
        })
        .await
        .unwrap();
    f.fleet
        .call("reconcile_host", &[("host_id", &f.host)])
        .await
        .unwrap();
    assert!(domain(&f.app, "lc-vm-1").await.2, "marked missing");
    let detail: HostDetail = f
        .fleet
        .call_as("get_host", &[("host_id", &f.host)])
        .await
        .unwrap();
    let names = |v: &[DomainSummary]| -> Vec<String> { v.iter().map(|d| d.name.clone()).collect() };
    assert!(!names(&detail.domains.items).contains(&"lc-vm-1".to_string()));
    assert_eq!(names(&detail.missing), ["lc-vm-1"]);
    // Only fleet admins forget.
    for c in [&f.owner, &f.admin_a] {
        assert_refused(
            &c.call("forget_domain", &[("host_id", &f.host), ("uuid", &vm1)])
                .await,
            "tenant user",
        );
    }
    f.fleet
        .call("forget_domain", &[("host_id", &f.host), ("uuid", &vm1)])
        .await
        .unwrap();
    assert_eq!(
        f.app
            .scalar_i64("SELECT count(*) FROM domains WHERE name = 'lc-vm-1'")
            .await,
        0
    );
    assert!(f
        .app
        .audit_actions()
        .await
        .iter()
        .any(|a| a == "domain.forget"));
}
