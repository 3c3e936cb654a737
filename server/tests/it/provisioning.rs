//! Self-service provisioning on libvirt's test driver: templates, requests, approvals,
//! quotas, placement, provisioning jobs, leases and day-2 operations.

use crate::common::*;
use app::fleet::{DomainSummary, FleetDashboard, HostSummary, VmDetail, VolumeInfo};
use app::provisioning::{
    ApprovalLevel, HomePanels, InboxItem, ManagedVm, QuotaEffect, Recount, RequestDetail,
    RequestEvent, RequestSummary, Snapshot, Template, TenantQuotas,
};
use app::states::{QuotaResource, RequestState, VmPhase};
use app::Page;
use concierge::hypervisor::simulation;
use std::time::Duration;
use uuid::Uuid;

pub(crate) struct World {
    pub(crate) app: TestApp,
    pub(crate) fleet: Client,
    pub(crate) tenant: Uuid,
    pub(crate) host: String,
    pub(crate) template: String,
    pub(crate) pool: String,
}

/// A tenant, a simulated host with a base image in its pool, and a published template offered
/// to the tenant (sizes: small 1 vCPU 1 GiB 10 GiB, large 4 vCPU 8 GiB 50 GiB).
async fn world() -> World {
    world_with(|_| {}).await
}

/// `world()` on a server whose configuration `tweak` changes first.
pub(crate) async fn world_with(tweak: impl FnOnce(&mut concierge::config::Config)) -> World {
    let app = spawn_app_with(tweak).await;
    let fleet = app.fleet_admin().await;
    let tenant = app.tenant("Acme").await;
    let dir = std::env::temp_dir().join(format!("concierge-prov-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = simulation::write_node(&dir, "hv1", 0).unwrap();
    let host = fleet
        .call_as::<HostSummary>(
            "register_host",
            &[("name", "hv1"), ("uri", &uri), ("schedulable", "true")],
        )
        .await
        .unwrap()
        .id
        .to_string();
    let pool = "hv1-pool".to_string();
    fleet
        .call(
            "create_volume",
            &[
                ("host_id", &host),
                ("pool", &pool),
                ("name", "debian-12.qcow2"),
                ("kind", "blank"),
                ("capacity_gib", "2"),
                ("source", ""),
            ],
        )
        .await
        .unwrap();
    let template = fleet
        .call_as::<Uuid>(
            "save_template",
            &[
                ("name", "Debian 12"),
                ("description", "Stable server image"),
                ("os", "Debian GNU/Linux 12"),
                ("sizes", "small 1 1 10\nlarge 4 8 50"),
                ("default_lease_days", "30"),
                ("max_lease_days", "90"),
                ("tenants", "acme"),
                ("image_host", &host),
                ("image_pool", &pool),
                ("image_volume", "debian-12.qcow2"),
            ],
        )
        .await
        .unwrap()
        .to_string();
    fleet
        .call(
            "publish_template",
            &[("id", &template), ("published", "true")],
        )
        .await
        .unwrap();
    World {
        app,
        fleet,
        tenant,
        host,
        template,
        pool,
    }
}

impl World {
    /// Registers another simulated host, `name`, with its own pool (`name`-pool) and nothing
    /// in it; returns its id.
    pub(crate) async fn add_host(&self, name: &str) -> String {
        let dir =
            std::env::temp_dir().join(format!("concierge-{name}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let uri = simulation::write_node(&dir, name, 0).unwrap();
        self.fleet
            .call_as::<HostSummary>(
                "register_host",
                &[("name", name), ("uri", &uri), ("schedulable", "true")],
            )
            .await
            .unwrap()
            .id
            .to_string()
    }

    /// Ann, a requester, and Boss, the tenant's admin, signed in.
    pub(crate) async fn ann_and_boss(&self) -> (Client, Client) {
        let (_, ann) = self
            .app
            .signed_in("ann@example.com", Some((self.tenant, "requester")))
            .await;
        let (_, boss) = self
            .app
            .signed_in("boss@example.com", Some((self.tenant, "tenant_admin")))
            .await;
        (ann, boss)
    }

    pub(crate) fn form<'a>(
        &'a self,
        tenant: &'a str,
        size: &'a str,
        count: &'a str,
        prefix: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("tenant_id", tenant),
            ("template_id", self.template.as_str()),
            ("size", size),
            ("count", count),
            ("name_prefix", prefix),
            ("lease_days", ""),
            ("purpose", "Integration tests"),
        ]
    }

    pub(crate) async fn submit(
        &self,
        c: &Client,
        size: &str,
        count: &str,
        prefix: &str,
    ) -> CallResult<Uuid> {
        let t = self.tenant.to_string();
        c.call_as("submit_request", &self.form(&t, size, count, prefix))
            .await
    }

    pub(crate) async fn set_policy(&self, admin: &Client, auto_count: &str, levels: &str) {
        admin
            .call(
                "set_policy",
                &[
                    ("tenant_id", &self.tenant.to_string()),
                    ("auto_max_vcpus", "2"),
                    ("auto_max_memory_gib", "4"),
                    ("auto_max_count", auto_count),
                    ("auto_max_lease_days", "30"),
                    ("expire_days", "7"),
                    ("levels", levels),
                ],
            )
            .await
            .unwrap();
    }

    /// Polls the request until it reaches `state` (or fails the test after 30 s).
    pub(crate) async fn wait_for(
        &self,
        c: &Client,
        id: &str,
        state: RequestState,
    ) -> RequestDetail {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r: RequestDetail = c.call_as("get_request", &[("id", id)]).await.unwrap();
            if r.request.state == state {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "request never reached {state}: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn recount(&self) -> Recount {
        self.fleet
            .call_as("recount_quota", &[("tenant_id", &self.tenant.to_string())])
            .await
            .unwrap()
    }

    pub(crate) async fn volumes(&self) -> Vec<String> {
        let v: Vec<VolumeInfo> = self
            .fleet
            .call_as(
                "list_volumes",
                &[("host_id", &self.host), ("pool", &self.pool)],
            )
            .await
            .unwrap();
        v.into_iter().map(|x| x.name).collect()
    }
}

/// A submitted request's id, as the tests pass it around.
#[track_caller]
fn id_of(submitted: CallResult<Uuid>) -> String {
    submitted.unwrap().to_string()
}

#[tokio::test]
async fn auto_approved_request_is_provisioned_and_running() {
    let w = world().await;
    let (owner, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    // The default policy auto-approves up to 2 vCPUs, 4 GiB, 1 VM, 30 days.
    w.set_policy(&w.fleet, "3", "").await;
    let t = w.tenant.to_string();
    let preview: QuotaEffect = ann
        .call_as(
            "quota_preview",
            &[
                ("tenant_id", &t),
                ("template_id", &w.template),
                ("size", "small"),
                ("count", "2"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(preview.tenant[0].adding, 2, "{preview:?}");
    assert!(preview.overflow.is_none());

    let id = id_of(w.submit(&ann, "small", "2", "web").await);
    let r = w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    assert_eq!(r.vms.len(), 2);
    for vm in &r.vms {
        assert_eq!(vm.phase, VmPhase::Running, "{vm:?}");
        assert_eq!(vm.state.as_deref(), Some("running"), "{vm:?}");
    }
    let names: Vec<&str> = r.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["web-1", "web-2"]);
    let kinds: Vec<&str> = r.events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "submitted",
        "approved",
        "placed",
        "cloning",
        "defining",
        "starting",
        "running",
        "fulfilled",
    ] {
        assert!(kinds.contains(&k), "{k} in the request log: {kinds:?}");
    }
    // Managed from the first sighting: never drift.
    let managed = w
        .app
        .scalar_i64(&format!(
            "SELECT count(*) FROM domains WHERE managed AND owner_id = '{owner}' AND tenant_id = '{}'",
            w.tenant
        ))
        .await;
    assert_eq!(managed, 2);
    let drift: Page<DomainSummary> = w.fleet.call_as("list_drift", &[]).await.unwrap();
    assert_eq!(drift.total, 0, "{drift:?}");
    let vols = w.volumes().await;
    assert_eq!(
        vols.iter().filter(|v| v.starts_with("cc-")).count(),
        2,
        "{vols:?}"
    );
    let rc = w.recount().await;
    assert!(rc.consistent, "{rc:?}");
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM quota_ledger WHERE state = 'allocated'")
            .await,
        2
    );
    let mine: Page<ManagedVm> = ann.call_as("my_vms", &[]).await.unwrap();
    assert_eq!(mine.total, 2);
    // Each listed VM's CPU sparkline is an image for those who may see the VM.
    let first = mine.items[0].uuid;
    let spark = ann.get(&format!("/sparklines/cpu/{first}")).await;
    assert_eq!(spark.status(), 200);
    assert_eq!(spark.headers()["content-type"], "image/svg+xml");
    assert!(spark.text().await.unwrap().starts_with("<svg"));
    let (_, stranger) = w
        .app
        .signed_in("stranger@example.com", Some((w.tenant, "requester")))
        .await;
    let refused = stranger.get(&format!("/sparklines/cpu/{first}")).await;
    assert_eq!(refused.status(), 404, "another requester's VM");
    // Filtered and sorted on the server.
    let list = |c: &Client, q: Vec<(&'static str, &'static str)>| {
        let c = c.clone();
        async move { c.call_as::<Page<ManagedVm>>("my_vms", &q).await }
    };
    let names =
        |p: &Page<ManagedVm>| -> Vec<String> { p.items.iter().map(|v| v.name.clone()).collect() };
    let found = list(&ann, vec![("search", "eb-2")]).await.unwrap();
    assert_eq!(
        (names(&found), found.total),
        (vec!["web-2".to_string()], 2 - 1)
    );
    let newest = list(&ann, vec![("sort", "created")]).await.unwrap();
    assert_eq!(newest.total, 2);
    let none = list(&ann, vec![("state", "shutoff")]).await.unwrap();
    assert_eq!(none.total, 0);
    let running = list(&ann, vec![("state", "running")]).await.unwrap();
    assert_eq!(running.total, 2);
    // A literal % is searched for, not a wildcard.
    assert_eq!(list(&ann, vec![("search", "%")]).await.unwrap().total, 0);
    assert_field_error(&list(&ann, vec![("sort", "price")]).await, "sort");
    assert_field_error(&list(&ann, vec![("state", "exploded")]).await, "state");
    // Everything one administers: fleet admins see all; a requester may not ask.
    assert_refused(
        &list(&ann, vec![("all", "true")]).await,
        "all VMs for a requester",
    );
    let all = list(&w.fleet, vec![("all", "true"), ("sort", "name")])
        .await
        .unwrap();
    assert_eq!(names(&all), ["web-1", "web-2"]);
    let fleet_own = list(&w.fleet, vec![]).await.unwrap();
    assert_eq!(fleet_own.total, 0);
    let actions = w.app.audit_actions().await;
    for a in [
        "template.create",
        "template.publish",
        "request.submit",
        "request.approve",
        "vm.provision",
        "request.fulfil",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }

    // Deleting a portal VM removes its disk and releases its quota.
    let uuid = r.vms[0].uuid.to_string();
    let uuid = uuid.as_str();
    ann.call(
        "vm_action",
        &[
            ("host_id", &w.host),
            ("uuid", uuid),
            ("action", "delete"),
            ("confirm", "web-1"),
        ],
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w
        .app
        .scalar_i64(&format!(
            "SELECT count(*) FROM vms WHERE uuid = '{uuid}' AND deleted_at IS NOT NULL"
        ))
        .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the VM was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vols = w.volumes().await;
    assert_eq!(
        vols.iter().filter(|v| v.starts_with("cc-")).count(),
        1,
        "{vols:?}"
    );
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{}'",
                w.tenant
            ))
            .await,
        1
    );
    assert!(w.recount().await.consistent);
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn approval_levels_rejection_and_cancellation() {
    let w = world().await;
    let t = w.tenant;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((t, "requester")))
        .await;
    let (_, bob) = w
        .app
        .signed_in("bob@example.com", Some((t, "requester")))
        .await;
    let (_, appr1) = w
        .app
        .signed_in("a1@example.com", Some((t, "approver")))
        .await;
    let (_, appr2) = w
        .app
        .signed_in("a2@example.com", Some((t, "approver")))
        .await;
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    let other_t = w.app.tenant("Other").await;
    let (_, eve) = w
        .app
        .signed_in("eve@example.com", Some((other_t, "tenant_admin")))
        .await;

    // Level 1 needs both approvers; level 2 any approver. Nothing is auto-approved.
    w.set_policy(&boss, "0", "all: a1@example.com, a2@example.com\nany:")
        .await;
    let id = id_of(w.submit(&ann, "large", "1", "db").await);
    let r = w.wait_for(&ann, &id, RequestState::PendingApproval).await;
    assert_eq!(r.waiting_for, ["a1@example.com", "a2@example.com"]);
    assert!(r.can_cancel);
    assert!(!r.can_decide);

    // Nobody decides their own request, other requesters and other tenants cannot decide.
    let own = ann
        .call("decide_request", &[("id", &id), ("decision", "approve")])
        .await;
    assert!(own.is_err());
    assert_refused(
        &bob.call("decide_request", &[("id", &id), ("decision", "approve")])
            .await,
        "requester",
    );
    assert_refused(
        &eve.call("decide_request", &[("id", &id), ("decision", "approve")])
            .await,
        "other tenant",
    );
    assert_refused(
        &eve.call("get_request", &[("id", &id)]).await,
        "other tenant reads",
    );
    // The tenant admin is not on level 1's list.
    assert_refused(
        &boss
            .call("decide_request", &[("id", &id), ("decision", "approve")])
            .await,
        "not listed",
    );

    let inbox: Vec<InboxItem> = appr1.call_as("approval_inbox", &[]).await.unwrap();
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    // The home page's count agrees with the inbox; the tenant admin is not listed at level 1.
    let waiting = |c: &Client| {
        let c = c.clone();
        async move { c.call_as::<u32>("approvals_waiting", &[]).await.unwrap() }
    };
    assert_eq!(waiting(&appr1).await, 1);
    assert_eq!(waiting(&boss).await, 0);
    // The home page's panels, read in one call, say the same, and each sees only their own.
    let home = |c: &Client| {
        let c = c.clone();
        async move { c.call_as::<HomePanels>("home_panels", &[]).await }
    };
    assert_eq!(home(&appr1).await.unwrap().waiting, Some(1));
    let panels = home(&ann).await.unwrap();
    assert_eq!(panels.waiting, None, "a requester approves nothing");
    assert_eq!(panels.requests.total, 1, "{panels:?}");
    assert_eq!(panels.requests.items[0].id.to_string(), id, "{panels:?}");
    let (_, quota) = panels.quota.as_ref().unwrap();
    assert_eq!(quota.tenant[0].resource, QuotaResource::Vcpus, "{panels:?}");
    assert_refused(
        &w.app.client().call("home_panels", &[]).await,
        "anonymous home panels",
    );
    assert_eq!(
        home(&eve).await.unwrap().requests.total,
        0,
        "another tenant's member"
    );
    assert_eq!(home(&bob).await.unwrap().requests.total, 0);
    assert_eq!(inbox[0].effect.tenant[0].adding, 4, "{inbox:?}");
    assert!(
        inbox[0].placement.starts_with("Would be placed on hv1"),
        "{inbox:?}"
    );

    appr1
        .call("decide_request", &[("id", &id), ("decision", "approve")])
        .await
        .unwrap();
    let again = appr1
        .call("decide_request", &[("id", &id), ("decision", "approve")])
        .await;
    assert!(matches!(again, Err((409, _))), "{again:?}");
    let r: RequestDetail = ann.call_as("get_request", &[("id", &id)]).await.unwrap();
    assert_eq!(r.level, Some(1));
    assert_eq!(r.waiting_for, ["a2@example.com"]);
    appr2
        .call("decide_request", &[("id", &id), ("decision", "approve")])
        .await
        .unwrap();
    let r: RequestDetail = ann.call_as("get_request", &[("id", &id)]).await.unwrap();
    assert_eq!(r.level, Some(2), "{r:?}");
    boss.call(
        "decide_request",
        &[("id", &id), ("decision", "approve"), ("reason", "fine")],
    )
    .await
    .unwrap();
    w.wait_for(&ann, &id, RequestState::Fulfilled).await;

    // Rejection needs a reason and releases the reservation.
    let used_before = w
        .app
        .scalar_i64(&format!(
            "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{t}'"
        ))
        .await;
    let id2 = id_of(w.submit(&bob, "small", "1", "tmp").await);
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{t}'"
            ))
            .await,
        used_before + 1
    );
    let r = appr1
        .call("decide_request", &[("id", &id2), ("decision", "reject")])
        .await;
    assert_field_error(&r, "reason");
    appr1
        .call(
            "decide_request",
            &[
                ("id", &id2),
                ("decision", "reject"),
                ("reason", "use the shared box"),
            ],
        )
        .await
        .unwrap();
    let r: RequestDetail = bob.call_as("get_request", &[("id", &id2)]).await.unwrap();
    assert_eq!(r.request.state, RequestState::Rejected);
    assert_eq!(r.request.reason.as_deref(), Some("use the shared box"));
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{t}'"
            ))
            .await,
        used_before
    );

    // Cancellation by the requester while pending; not by anyone else, not twice.
    let id3 = id_of(w.submit(&bob, "small", "1", "tmp2").await);
    assert_refused(
        &ann.call("cancel_request", &[("id", &id3)]).await,
        "someone else cancels",
    );
    // Refused like any object: 404 to those who cannot see the request, 403 to those who can.
    let status = |r: CallResult| r.err().map(|(status, _)| status);
    assert_eq!(
        status(ann.call("cancel_request", &[("id", &id3)]).await),
        Some(404)
    );
    assert_eq!(
        status(eve.call("cancel_request", &[("id", &id3)]).await),
        Some(404)
    );
    assert_eq!(
        status(appr1.call("cancel_request", &[("id", &id3)]).await),
        Some(403)
    );
    bob.call("cancel_request", &[("id", &id3)]).await.unwrap();
    assert!(matches!(
        bob.call("cancel_request", &[("id", &id3)]).await,
        Err((409, _))
    ));
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{t}'"
            ))
            .await,
        used_before
    );
    assert!(w.recount().await.consistent);
    let actions = w.app.audit_actions().await;
    for a in [
        "policy.set",
        "request.approve",
        "request.reject",
        "request.cancel",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    // The approver's list shows the tenant's requests; a requester's shows only theirs.
    let all: Page<RequestSummary> = appr1
        .call_as("list_requests", &[("all", "true")])
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let mine: Page<RequestSummary> = bob.call_as("list_requests", &[]).await.unwrap();
    assert_eq!(mine.total, 2);
    assert_refused(
        &bob.call("list_requests", &[("all", "true")]).await,
        "requester lists all",
    );
    // Filters and sorts run on the server, over the same set the actor may see.
    let list = |who: &'static str, params: Vec<(&'static str, &'static str)>| {
        let client = if who == "bob" { &bob } else { &appr1 };
        async move {
            client
                .call_as::<Page<RequestSummary>>("list_requests", &params)
                .await
        }
    };
    let ids = |page: &Page<RequestSummary>| -> Vec<String> {
        page.items.iter().map(|r| r.id.to_string()).collect()
    };
    let rejected = list("appr1", vec![("all", "true"), ("state", "rejected")])
        .await
        .unwrap();
    assert_eq!(ids(&rejected), vec![id2.clone()]);
    let open = list("appr1", vec![("all", "true"), ("state", "open")])
        .await
        .unwrap();
    assert_eq!(open.total, 0, "nothing is in flight: {open:?}");
    let by_prefix = list("appr1", vec![("all", "true"), ("search", "TMP2")])
        .await
        .unwrap();
    assert_eq!(ids(&by_prefix), vec![id3.clone()]);
    let by_requester = list("appr1", vec![("all", "true"), ("search", "ann@")])
        .await
        .unwrap();
    assert_eq!(ids(&by_requester), vec![id.clone()]);
    let newest = list("appr1", vec![("all", "true")]).await.unwrap();
    assert_eq!(ids(&newest), vec![id3.clone(), id2.clone(), id.clone()]);
    let oldest = list("appr1", vec![("all", "true"), ("sort", "oldest")])
        .await
        .unwrap();
    assert_eq!(ids(&oldest), vec![id.clone(), id2.clone(), id3.clone()]);
    let by_state = list("appr1", vec![("all", "true"), ("sort", "state")])
        .await
        .unwrap();
    let states: Vec<RequestState> = by_state.items.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            RequestState::Cancelled,
            RequestState::Fulfilled,
            RequestState::Rejected
        ]
    );
    // Bob's own list never shows Ann's request, whatever the filter.
    let bobs = list("bob", vec![("search", "ann@")]).await.unwrap();
    assert_eq!(bobs.total, 0);
    assert_field_error(&list("bob", vec![("sort", "price")]).await, "sort");
    assert_field_error(&list("bob", vec![("state", "lost")]).await, "state");
    let long = "x".repeat(101);
    assert_field_error(
        &bob.call("list_requests", &[("search", long.as_str())])
            .await,
        "search",
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn concurrent_submissions_never_overshoot_the_quota() {
    let w = world().await;
    let t = w.tenant.to_string();
    w.fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("vcpus", "10"),
                ("memory_gib", "1000"),
                ("disk_gib", "100000"),
                ("vms", "1000"),
            ],
        )
        .await
        .unwrap();
    // Nothing auto-approved: the reservations stay while 100 submissions race.
    w.set_policy(&w.fleet, "0", "").await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let (_, c) = w
            .app
            .signed_in(&format!("u{i}@example.com"), Some((w.tenant, "requester")))
            .await;
        clients.push(c);
    }
    let mut calls = Vec::new();
    for i in 0..100 {
        let c = &clients[i % 10];
        let w = &w;
        calls.push(async move {
            let prefix = format!("race-{i}");
            w.submit(c, "small", "1", &prefix).await
        });
    }
    let results = futures::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "exactly the quota's worth succeeds");
    for r in results.iter().filter(|r| r.is_err()) {
        let msg = assert_field_error(r, "count");
        assert!(msg.contains("vCPUs"), "names the resource: {msg}");
    }
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT used_vcpus::int8 FROM tenant_quotas WHERE tenant_id = '{t}'"
            ))
            .await,
        10
    );
    assert_eq!(w.app.scalar_i64("SELECT count(*) FROM requests").await, 10);
    let rc = w.recount().await;
    assert!(rc.consistent, "{rc:?}");

    // A user's own limit holds under the same race: room for 3 more vCPUs, 30 racing asks.
    w.fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("vcpus", "1000"),
                ("memory_gib", "1000"),
                ("disk_gib", "100000"),
                ("vms", "1000"),
            ],
        )
        .await
        .unwrap();
    let held = w
        .app
        .scalar_i64(
            "SELECT coalesce(sum(l.vcpus), 0)::int8 FROM quota_ledger l JOIN users u ON u.id = l.user_id
             WHERE u.email = 'u0@example.com' AND l.state <> 'released'",
        )
        .await;
    w.fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("user_email", "u0@example.com"),
                ("vcpus", &(held + 3).to_string()),
                ("memory_gib", "1000"),
                ("disk_gib", "10000"),
                ("vms", "100"),
            ],
        )
        .await
        .unwrap();
    let calls = (0..30).map(|i| {
        let (c, w) = (&clients[0], &w);
        async move { w.submit(c, "small", "1", &format!("own-{i}")).await }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    for r in results.iter().filter(|r| r.is_err()) {
        let msg = assert_field_error(r, "count");
        assert!(msg.contains("your"), "names the user's quota: {msg}");
    }
    let rc = w.recount().await;
    assert!(rc.consistent, "{rc:?}");
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn per_user_quota_inside_the_tenant_quota() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((w.tenant, "tenant_admin")))
        .await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let set = |email: &'static str, vcpus: &'static str| {
        let (boss, t) = (&boss, t.clone());
        async move {
            boss.call(
                "set_quota",
                &[
                    ("tenant_id", &t),
                    ("user_email", email),
                    ("vcpus", vcpus),
                    ("memory_gib", "4"),
                    ("disk_gib", "100"),
                    ("vms", "5"),
                ],
            )
            .await
        }
    };
    assert_field_error(&set("ann@example.com", "999").await, "vcpus");
    assert_field_error(&set("nobody@example.com", "2").await, "user_email");
    set("ann@example.com", "2").await.unwrap();
    // Only fleet admins set the tenant's own quota.
    assert_refused(
        &boss
            .call(
                "set_quota",
                &[
                    ("tenant_id", &t),
                    ("vcpus", "999"),
                    ("memory_gib", "1"),
                    ("disk_gib", "1"),
                    ("vms", "1"),
                ],
            )
            .await,
        "tenant admin sets the tenant quota",
    );
    w.set_policy(&boss, "0", "").await;
    w.submit(&ann, "small", "2", "a").await.unwrap();
    let r = w.submit(&ann, "small", "1", "b").await;
    let msg = assert_field_error(&r, "count");
    assert!(msg.contains("your vCPUs quota"), "{msg}");
    let q: TenantQuotas = boss
        .call_as("tenant_quotas", &[("tenant_id", &t)])
        .await
        .unwrap();
    assert_eq!(q.users[0].email, "ann@example.com");
    assert_eq!(q.users[0].lines[0].used, 2);
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn bad_input_is_named_and_changes_nothing() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let (_, mgr) = w
        .app
        .signed_in("mgr@example.com", Some((w.tenant, "manager")))
        .await;
    let counts = "SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM quota_ledger) + (SELECT count(*) FROM vms) + (SELECT count(*) FROM jobs)";
    let before = (w.app.snapshot().await, w.app.scalar_i64(counts).await);
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("size", "huge")], "size"),
        (vec![("count", "-1")], "count"),
        (vec![("count", "100000")], "count"),
        (vec![("count", "two")], "count"),
        (vec![("name_prefix", "<domain>'; rm -rf /")], "name_prefix"),
        (vec![("name_prefix", "$(reboot)")], "name_prefix"),
        (vec![("name_prefix", "")], "name_prefix"),
        (vec![("lease_days", "91")], "lease_days"),
        (vec![("lease_days", "-3")], "lease_days"),
        (vec![("purpose", "")], "purpose"),
        (
            vec![("template_id", "00000000-0000-0000-0000-000000000000")],
            "template_id",
        ),
    ];
    for (overrides, field) in cases {
        let mut form: Vec<(&str, &str)> = w.form(&t, "small", "1", "ok");
        for (k, v) in overrides {
            for f in form.iter_mut() {
                if f.0 == k {
                    f.1 = v;
                }
            }
        }
        let r = ann.call("submit_request", &form).await;
        assert_field_error(&r, field);
    }
    // A manager reads reports but does not request.
    let r = w.submit(&mgr, "small", "1", "m").await;
    assert_field_error(&r, "tenant_id");
    // Templates: every bad field named at once.
    let r = w
        .fleet
        .call(
            "save_template",
            &[
                ("name", ""),
                ("os", "x"),
                ("sizes", "tiny -1 0 0"),
                ("default_lease_days", "100"),
                ("max_lease_days", "10"),
                ("tenants", "nope"),
            ],
        )
        .await;
    for f in ["name", "sizes", "max_lease_days"] {
        assert_field_error(&r, f);
    }
    let r = w
        .fleet
        .call(
            "save_template",
            &[
                ("name", "X"),
                ("os", "x"),
                ("sizes", "s 1 1 1"),
                ("default_lease_days", "1"),
                ("max_lease_days", "1"),
                ("tenants", "nope"),
                ("image_host", &w.host),
                ("image_pool", &w.pool),
                ("image_volume", "debian-12.qcow2"),
            ],
        )
        .await;
    assert_field_error(&r, "tenants");
    let r = w
        .fleet
        .call(
            "save_template",
            &[
                ("name", "X"),
                ("os", "x"),
                ("sizes", "s 1 1 1"),
                ("default_lease_days", "1"),
                ("max_lease_days", "1"),
                ("tenants", "*"),
                ("image_host", &w.host),
                ("image_pool", &w.pool),
                ("image_volume", "missing.qcow2"),
            ],
        )
        .await;
    assert_field_error(&r, "image_volume");
    let r = w
        .fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("vcpus", "-1"),
                ("memory_gib", "x"),
                ("disk_gib", "1"),
                ("vms", "1"),
            ],
        )
        .await;
    assert_field_error(&r, "vcpus");
    assert_field_error(&r, "memory_gib");
    assert_eq!(
        before,
        (w.app.snapshot().await, w.app.scalar_i64(counts).await)
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn catalog_visibility_and_authorization() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (ann, boss) = w.ann_and_boss().await;
    let other = w.app.tenant("Other").await;
    let (_, eve) = w
        .app
        .signed_in("eve@example.com", Some((other, "requester")))
        .await;
    let o = other.to_string();

    let cat: Vec<Template> = ann.call_as("catalog", &[("tenant_id", &t)]).await.unwrap();
    assert_eq!(cat.len(), 1);
    let found: Vec<Template> = ann
        .call_as("catalog", &[("tenant_id", &t), ("search", "debian")])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let none: Vec<Template> = ann
        .call_as("catalog", &[("tenant_id", &t), ("search", "windows")])
        .await
        .unwrap();
    assert_eq!(none.len(), 0);
    // Offered to Acme only.
    assert_eq!(
        eve.call_as::<Vec<Template>>("catalog", &[("tenant_id", &o)])
            .await
            .unwrap()
            .len(),
        0
    );
    assert_refused(
        &eve.call("catalog", &[("tenant_id", &t)]).await,
        "other tenant's catalog",
    );
    let r = w.submit(&eve, "small", "1", "x").await;
    assert_field_error(&r, "tenant_id");

    // Tenant admins hide a template for their tenant only; fleet-only operations are refused.
    assert_refused(
        &ann.call(
            "hide_template",
            &[("tenant_id", &t), ("id", &w.template), ("hidden", "true")],
        )
        .await,
        "requester hides",
    );
    assert_refused(
        &eve.call(
            "hide_template",
            &[("tenant_id", &t), ("id", &w.template), ("hidden", "true")],
        )
        .await,
        "other tenant hides",
    );
    boss.call(
        "hide_template",
        &[("tenant_id", &t), ("id", &w.template), ("hidden", "true")],
    )
    .await
    .unwrap();
    assert_eq!(
        ann.call_as::<Vec<Template>>("catalog", &[("tenant_id", &t)])
            .await
            .unwrap()
            .len(),
        0
    );
    let admin_view: Vec<Template> = boss
        .call_as("catalog", &[("tenant_id", &t), ("include_hidden", "true")])
        .await
        .unwrap();
    assert!(admin_view[0].hidden);
    assert_field_error(&w.submit(&ann, "small", "1", "x").await, "template_id");
    boss.call(
        "hide_template",
        &[("tenant_id", &t), ("id", &w.template), ("hidden", "false")],
    )
    .await
    .unwrap();

    for c in [&ann, &boss, &eve] {
        assert_refused(&c.call("list_templates", &[]).await, "list templates");
        assert_refused(
            &c.call(
                "publish_template",
                &[("id", &w.template), ("published", "false")],
            )
            .await,
            "publish",
        );
        assert_refused(
            &c.call(
                "save_template",
                &[
                    ("name", "Y"),
                    ("os", "y"),
                    ("sizes", "s 1 1 1"),
                    ("default_lease_days", "1"),
                    ("max_lease_days", "1"),
                    ("tenants", "*"),
                ],
            )
            .await,
            "save",
        );
    }
    assert_refused(
        &ann.call("tenant_quotas", &[("tenant_id", &t)]).await,
        "requester reads quotas",
    );
    assert_refused(
        &eve.call("tenant_quotas", &[("tenant_id", &t)]).await,
        "other tenant reads quotas",
    );
    assert_refused(
        &eve.call("recount_quota", &[("tenant_id", &t)]).await,
        "other tenant recounts",
    );
    assert_refused(
        &ann.call(
            "set_policy",
            &[
                ("tenant_id", &t),
                ("auto_max_vcpus", "99"),
                ("auto_max_memory_gib", "1"),
                ("auto_max_count", "1"),
                ("auto_max_lease_days", "1"),
                ("expire_days", "1"),
            ],
        )
        .await,
        "requester sets policy",
    );
    assert_refused(&ann.call("approval_inbox", &[]).await, "requester inbox");
    assert_refused(
        &ann.call("approvals_waiting", &[]).await,
        "requester's waiting count",
    );
    // Nobody previews (or learns) another tenant's quota.
    let r = eve
        .call(
            "quota_preview",
            &[
                ("tenant_id", &t),
                ("template_id", &w.template),
                ("size", "small"),
                ("count", "1"),
            ],
        )
        .await;
    assert_field_error(&r, "tenant_id");
    // Every member reads their own quota use; the fleet dashboard is for fleet admins.
    let q: QuotaEffect = ann.call_as("my_quota", &[("tenant_id", &t)]).await.unwrap();
    assert_eq!(q.tenant[0].resource, QuotaResource::Vcpus);
    assert_refused(
        &eve.call("my_quota", &[("tenant_id", &t)]).await,
        "another tenant's quota",
    );
    for c in [&ann, &boss, &eve] {
        assert_refused(&c.call("fleet_dashboard", &[]).await, "fleet dashboard");
    }
    let d: FleetDashboard = w.fleet.call_as("fleet_dashboard", &[]).await.unwrap();
    assert_eq!(d.hosts, 1, "{d:?}");
    assert_eq!(d.connected, 1, "{d:?}");
    // Unpublishing takes it out of every catalog.
    w.fleet
        .call(
            "publish_template",
            &[("id", &w.template), ("published", "false")],
        )
        .await
        .unwrap();
    assert_eq!(
        ann.call_as::<Vec<Template>>("catalog", &[("tenant_id", &t)])
            .await
            .unwrap()
            .len(),
        0
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn leases_remind_stop_and_delete_with_extensions() {
    let w = world().await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let (_, bob) = w
        .app
        .signed_in("bob@example.com", Some((w.tenant, "requester")))
        .await;
    w.set_policy(&w.fleet, "1", "").await;
    let id = id_of(w.submit(&ann, "small", "1", "lease").await);
    let r = w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    let uuid = r.vms[0].uuid.to_string();
    let vm = |c: &Client| {
        let (c, uuid) = (c.clone(), uuid.clone());
        async move {
            c.call_as::<Option<ManagedVm>>("get_managed_vm", &[("uuid", &uuid)])
                .await
                .unwrap()
        }
    };
    assert_eq!(vm(&ann).await.expect("her VM").lease_days_left, 29);
    assert!(
        vm(&bob).await.is_none(),
        "another requester does not see it"
    );
    assert_refused(
        &bob.call("extend_lease", &[("uuid", &uuid), ("days", "1")])
            .await,
        "not the owner",
    );

    let leases = &w.app.state.leases;
    // Sessions time out with the clock: sign in again after each jump.
    let relogin = || async {
        ann.login("ann@example.com", PASSWORD).await.unwrap();
        bob.login("bob@example.com", PASSWORD).await.unwrap();
        w.fleet
            .login("admin@concierge.local", ADMIN_PASSWORD)
            .await
            .unwrap();
    };
    w.app.clock.advance(time::Duration::days(24));
    relogin().await;
    let t = leases.tick().await.unwrap();
    assert_eq!(t.reminded, 1);
    assert_eq!(leases.tick().await.unwrap().reminded, 0, "reminded once");
    w.app.clock.advance(time::Duration::hours(5 * 24 + 12));
    relogin().await;
    assert_eq!(
        leases.tick().await.unwrap().reminded,
        1,
        "the one-day reminder"
    );

    // Up to the template's maximum (90 days from today) the owner extends alone.
    assert_field_error(
        &ann.call("extend_lease", &[("uuid", &uuid), ("days", "120")])
            .await,
        "days",
    );
    assert_field_error(
        &ann.call("extend_lease", &[("uuid", &uuid), ("days", "-1")])
            .await,
        "days",
    );
    ann.call("extend_lease", &[("uuid", &uuid), ("days", "10")])
        .await
        .unwrap();
    assert_eq!(vm(&ann).await.expect("her VM").lease_days_left, 10);

    w.app.clock.advance(time::Duration::days(11));
    relogin().await;
    let t = leases.tick().await.unwrap();
    assert_eq!(t.stopped, 1, "{t:?}");
    let v = vm(&ann).await.expect("her VM");
    assert_eq!(v.phase, VmPhase::Expired);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vm(&ann).await.and_then(|v| v.state).as_deref() != Some("shutoff") {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired VM was never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.app.clock.advance(time::Duration::days(8));
    relogin().await;
    let t = leases.tick().await.unwrap();
    assert_eq!(t.deleting, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while vm(&ann).await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the VM was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        w.volumes()
            .await
            .iter()
            .filter(|v| v.starts_with("cc-"))
            .count(),
        0
    );
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM quota_ledger WHERE state <> 'released'")
            .await,
        0
    );
    assert!(w.recount().await.consistent);
    let actions = w.app.audit_actions().await;
    for a in [
        "vm.lease.remind",
        "vm.lease.extend",
        "vm.lease.expire",
        "vm.lease.delete",
        "vm.delete",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    // Ann was told each time, in the app, with a link to the VM's page.
    let told: Vec<app::notifications::Notification> =
        ann.call_as("my_notifications", &[]).await.unwrap();
    let count = |k| told.iter().filter(|n| n.kind == k).count();
    use app::notifications::NotificationKind as K;
    assert_eq!(count(K::LeaseReminder), 2, "{told:#?}");
    assert_eq!(count(K::LeaseExpired), 1, "{told:#?}");
    let reminder = told.iter().find(|n| n.kind == K::LeaseReminder).unwrap();
    assert!(
        reminder.link.starts_with("/vms/") && reminder.link.ends_with(&uuid),
        "{}",
        reminder.link
    );
    assert!(reminder.title.starts_with("lease"), "{}", reminder.title);

    // A pending request nobody decides expires and gives its reservation back.
    w.set_policy(&w.fleet, "0", "").await;
    let id = id_of(w.submit(&bob, "small", "1", "stale").await);
    w.app.clock.advance(time::Duration::days(8));
    relogin().await;
    assert_eq!(leases.tick().await.unwrap().requests_expired, 1);
    let r: RequestDetail = bob.call_as("get_request", &[("id", &id)]).await.unwrap();
    assert_eq!(r.request.state, RequestState::Expired);
    let told: Vec<app::notifications::Notification> =
        bob.call_as("my_notifications", &[]).await.unwrap();
    assert!(
        told.iter().any(
            |n| n.kind == app::notifications::NotificationKind::RequestExpired
                && n.link == format!("/requests/{id}")
        ),
        "{told:#?}"
    );
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM quota_ledger WHERE state <> 'released'")
            .await,
        0
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn resize_and_snapshots() {
    let w = world().await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let (_, bob) = w
        .app
        .signed_in("bob@example.com", Some((w.tenant, "requester")))
        .await;
    w.set_policy(&w.fleet, "1", "").await;
    let id = id_of(w.submit(&ann, "small", "1", "r").await);
    let r = w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    let uuid = r.vms[0].uuid.to_string();

    let r = ann
        .call(
            "resize_vm",
            &[("uuid", &uuid), ("vcpus", "2"), ("memory_gib", "2")],
        )
        .await;
    assert!(
        matches!(r, Err((409, _))),
        "running VMs are not resized: {r:?}"
    );
    ann.call(
        "vm_action",
        &[
            ("host_id", &w.host),
            ("uuid", &uuid),
            ("action", "force_off"),
        ],
    )
    .await
    .unwrap();
    assert_field_error(
        &ann.call(
            "resize_vm",
            &[("uuid", &uuid), ("vcpus", "0"), ("memory_gib", "2")],
        )
        .await,
        "vcpus",
    );
    assert_refused(
        &bob.call(
            "resize_vm",
            &[("uuid", &uuid), ("vcpus", "2"), ("memory_gib", "2")],
        )
        .await,
        "not the owner",
    );
    // Quota re-checked: 16 vCPUs in the tenant.
    assert_field_error(
        &ann.call(
            "resize_vm",
            &[("uuid", &uuid), ("vcpus", "17"), ("memory_gib", "2")],
        )
        .await,
        "vcpus",
    );
    ann.call(
        "resize_vm",
        &[("uuid", &uuid), ("vcpus", "2"), ("memory_gib", "2")],
    )
    .await
    .unwrap();
    let v = ann
        .call_as::<Option<ManagedVm>>("get_managed_vm", &[("uuid", &uuid)])
        .await
        .unwrap()
        .expect("her VM");
    assert_eq!(v.vcpus, 2);
    assert_eq!(v.memory_mib, 2048);
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT vcpus::int8 FROM domains WHERE uuid = '{uuid}'"
            ))
            .await,
        2,
        "libvirt has the new size"
    );
    assert!(w.recount().await.consistent);

    assert_field_error(
        &ann.call(
            "snapshot_action",
            &[("uuid", &uuid), ("op", "create"), ("name", "../x")],
        )
        .await,
        "name",
    );
    ann.call(
        "snapshot_action",
        &[
            ("uuid", &uuid),
            ("op", "create"),
            ("name", "before-upgrade"),
            ("description", "<ok & fine>"),
        ],
    )
    .await
    .unwrap();
    assert_field_error(
        &ann.call(
            "snapshot_action",
            &[
                ("uuid", &uuid),
                ("op", "create"),
                ("name", "before-upgrade"),
            ],
        )
        .await,
        "name",
    );
    let list: Vec<Snapshot> = ann
        .call_as("list_snapshots", &[("uuid", &uuid)])
        .await
        .unwrap();
    assert_eq!(list[0].name, "before-upgrade");
    assert_eq!(list[0].description, "<ok & fine>");
    assert_refused(
        &bob.call("list_snapshots", &[("uuid", &uuid)]).await,
        "not the owner",
    );
    ann.call(
        "snapshot_action",
        &[
            ("uuid", &uuid),
            ("op", "revert"),
            ("name", "before-upgrade"),
        ],
    )
    .await
    .unwrap();
    ann.call(
        "snapshot_action",
        &[
            ("uuid", &uuid),
            ("op", "delete"),
            ("name", "before-upgrade"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        ann.call_as::<Vec<Snapshot>>("list_snapshots", &[("uuid", &uuid)])
            .await
            .unwrap()
            .len(),
        0
    );
    let actions = w.app.audit_actions().await;
    for a in [
        "vm.resize",
        "vm.snapshot.create",
        "vm.snapshot.revert",
        "vm.snapshot.delete",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn no_room_waits_with_the_reason_then_provisions() {
    let w = world().await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    w.set_policy(&w.fleet, "1", "").await;
    sqlx::query("UPDATE hosts SET maintenance = true")
        .execute(&w.app.db)
        .await
        .unwrap();
    let id = id_of(w.submit(&ann, "small", "1", "patient").await);
    // The request says why it waits, once, and keeps its quota.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r: RequestDetail = ann.call_as("get_request", &[("id", &id)]).await.unwrap();
        let waiting: Vec<&RequestEvent> = r.events.iter().filter(|e| e.kind == "waiting").collect();
        if let Some(e) = waiting.first() {
            assert!(e.message.contains("hv1 is in maintenance"), "{e:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never said it waits: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r: RequestDetail = ann.call_as("get_request", &[("id", &id)]).await.unwrap();
    let waits = r.events.iter().filter(|e| e.kind == "waiting").count();
    assert_eq!(waits, 1, "the same reason is logged once: {r:#?}");
    assert_eq!(r.vms[0].phase, VmPhase::Pending);
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM quota_ledger WHERE state = 'reserved'")
            .await,
        1
    );
    sqlx::query("UPDATE hosts SET maintenance = false")
        .execute(&w.app.db)
        .await
        .unwrap();
    w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    // Waiting used no attempt.
    assert_eq!(
        w.app
            .scalar_i64("SELECT attempts::int8 FROM jobs WHERE kind = 'provision'")
            .await,
        1
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn a_vm_that_cannot_be_built_fails_after_its_attempts_and_releases_quota() {
    let w = world().await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    w.set_policy(&w.fleet, "2", "").await;
    // The portal refuses to delete a template's base image...
    let refused = w
        .fleet
        .call(
            "delete_volume",
            &[
                ("host_id", &w.host),
                ("pool", &w.pool),
                ("name", "debian-12.qcow2"),
                ("confirm", "debian-12.qcow2"),
            ],
        )
        .await;
    assert!(
        matches!(&refused, Err((409, app::error::AppError::Conflict(m))) if m.contains("base image of template")),
        "{refused:?}"
    );
    // ...so it disappears from the host behind the portal's back.
    let pool = w.pool.clone();
    w.app
        .state
        .hypervisors
        .call(w.host.parse().unwrap(), move |conn| {
            concierge::hypervisor::storage::delete_volume(conn, &pool, "debian-12.qcow2")
        })
        .await
        .unwrap();
    let id = id_of(w.submit(&ann, "small", "2", "doomed").await);
    let r = w.wait_for(&ann, &id, RequestState::Failed).await;
    for vm in &r.vms {
        assert_eq!(vm.phase, VmPhase::Failed, "{vm:?}");
        assert!(vm.error.as_deref().unwrap().len() > 3, "{vm:?}");
    }
    assert!(
        r.request.reason.as_deref().unwrap().contains("2 of 2"),
        "{r:#?}"
    );
    assert_eq!(
        w.app.scalar_i64("SELECT max(attempts)::int8 FROM jobs WHERE kind = 'provision' AND state = 'failed'").await,
        3,
        "the attempt cap (3 in tests)"
    );
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM quota_ledger WHERE state <> 'released'")
            .await,
        0
    );
    assert!(w.recount().await.consistent);
    assert!(w.volumes().await.iter().all(|v| !v.starts_with("cc-")));
    let actions = w.app.audit_actions().await;
    assert!(actions.iter().any(|a| a == "request.fail"), "{actions:?}");
    // Ann hears once (not once per VM), that two of two failed, with a link to the request.
    let told: Vec<app::notifications::Notification> =
        ann.call_as("my_notifications", &[]).await.unwrap();
    let failed: Vec<_> = told
        .iter()
        .filter(|n| n.kind == app::notifications::NotificationKind::RequestFailed)
        .collect();
    assert_eq!(failed.len(), 1, "{told:#?}");
    assert!(failed[0].body.contains("2 of 2"), "{:?}", failed[0]);
    assert_eq!(failed[0].link, format!("/requests/{id}"));
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn auto_approval_can_be_limited_to_some_templates() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((w.tenant, "tenant_admin")))
        .await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let policy = |templates: &'static str| {
        let (boss, t) = (boss.clone(), t.clone());
        async move {
            boss.call(
                "set_policy",
                &[
                    ("tenant_id", &t),
                    ("auto_max_vcpus", "2"),
                    ("auto_max_memory_gib", "4"),
                    ("auto_max_count", "1"),
                    ("auto_max_lease_days", "30"),
                    ("expire_days", "7"),
                    ("levels", ""),
                    ("auto_templates", templates),
                ],
            )
            .await
        }
    };
    assert_field_error(&policy("Windows 11").await, "auto_templates");
    // Listed: approved at once.
    policy("debian 12").await.unwrap();
    let q: TenantQuotas = boss
        .call_as("tenant_quotas", &[("tenant_id", &t)])
        .await
        .unwrap();
    assert_eq!(q.policy.auto_template_names, ["Debian 12"]);
    let id = id_of(w.submit(&ann, "small", "1", "listed").await);
    let state = |id: String| {
        let ann = ann.clone();
        async move {
            ann.call_as::<RequestDetail>("get_request", &[("id", &id)])
                .await
                .unwrap()
                .request
                .state
        }
    };
    assert_ne!(state(id).await, RequestState::PendingApproval);
    // Another template listed instead: the same request now waits for an approver.
    let other = w
        .fleet
        .call_as::<Uuid>(
            "save_template",
            &[
                ("name", "Alpine"),
                ("os", "Alpine Linux"),
                ("sizes", "tiny 1 0.5 2"),
                ("default_lease_days", "7"),
                ("max_lease_days", "30"),
                ("tenants", "*"),
                ("image_host", &w.host),
                ("image_pool", &w.pool),
                ("image_volume", "debian-12.qcow2"),
            ],
        )
        .await
        .unwrap();
    w.fleet
        .call(
            "publish_template",
            &[("id", &other.to_string()), ("published", "true")],
        )
        .await
        .unwrap();
    policy("Alpine").await.unwrap();
    let id = id_of(w.submit(&ann, "small", "1", "unlisted").await);
    assert_eq!(state(id).await, RequestState::PendingApproval);
    w.app.state.hypervisors.stop_all();
}

/// Outside testing: a member of two tenants could not act on their own VM in the second one
/// (a 500 from row-level security), and a member removed from a tenant kept reading their VM
/// there, its disks, operations and request log.
#[tokio::test]
async fn ownership_lasts_as_long_as_membership_and_each_vm_is_acted_on_in_its_tenant() {
    let w = world().await;
    let beta = w.app.tenant("Beta").await;
    sqlx::query("UPDATE templates SET all_tenants = true")
        .execute(&w.app.db)
        .await
        .unwrap();
    let (dual, c) = w
        .app
        .signed_in("dual@example.com", Some((w.tenant, "requester")))
        .await;
    sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'requester')")
        .bind(beta)
        .bind(dual)
        .execute(&w.app.db)
        .await
        .unwrap();
    w.app.state.accounts.cache.invalidate_all();
    let mut made = Vec::new();
    for (tenant, prefix) in [(w.tenant, "in-acme"), (beta, "in-beta")] {
        let t = tenant.to_string();
        let id = id_of(
            c.call_as("submit_request", &w.form(&t, "small", "1", prefix))
                .await,
        );
        let r = w.wait_for(&c, &id, RequestState::Fulfilled).await;
        let vm = &r.vms[0];
        made.push((id, vm.host_id.unwrap().to_string(), vm.uuid.to_string()));
    }
    let (acme_request, acme_host, acme_vm) = made[0].clone();
    let (_, beta_host, beta_vm) = made[1].clone();

    // The VM in the second tenant: its page and an action, recorded in that tenant.
    c.call("get_vm", &[("host_id", &beta_host), ("uuid", &beta_vm)])
        .await
        .unwrap();
    c.call(
        "vm_action",
        &[
            ("host_id", &beta_host),
            ("uuid", &beta_vm),
            ("action", "reboot"),
        ],
    )
    .await
    .expect("the owner acts on their VM in their second tenant");
    let op_tenant: Uuid = sqlx::query_scalar(
        "SELECT tenant_id FROM domain_operations WHERE domain_uuid = $1::uuid AND operation = 'reboot'",
    )
    .bind(&beta_vm)
    .fetch_one(&w.app.db)
    .await
    .unwrap();
    assert_eq!(op_tenant, beta);

    // The catalog tells a requester what they choose, not who else gets it or where it lives.
    // Kept as JSON: the host's name must appear nowhere in the answer's text.
    let catalog = c
        .call("catalog", &[("tenant_id", &beta.to_string())])
        .await
        .unwrap();
    let entry = &as_dto::<Vec<Template>>(&catalog)[0];
    assert_eq!(entry.name, "Debian 12");
    assert!(entry.tenant_ids.is_empty(), "{entry:?}");
    assert!(entry.tenant_names.is_empty(), "{entry:?}");
    assert!(entry.images.is_empty(), "{entry:?}");
    assert!(!catalog.to_string().contains("hv1"), "{catalog}");

    // Removed from Acme, still in Beta: still signed in, but Acme's VM and request are gone.
    w.fleet
        .call(
            "remove_member",
            &[
                ("tenant_id", &w.tenant.to_string()),
                ("user_id", &dual.to_string()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(c.whoami().await.as_deref(), Some("dual@example.com"));
    assert_refused(
        &c.call("get_vm", &[("host_id", &acme_host), ("uuid", &acme_vm)])
            .await,
        "the VM page of a tenant one left",
    );
    assert_refused(
        &c.call(
            "vm_action",
            &[
                ("host_id", &acme_host),
                ("uuid", &acme_vm),
                ("action", "reboot"),
            ],
        )
        .await,
        "an action on a VM of a tenant one left",
    );
    assert_refused(
        &c.call("get_request", &[("id", &acme_request)]).await,
        "the request log of a tenant one left",
    );
    let managed = c
        .call_as::<Option<ManagedVm>>("get_managed_vm", &[("uuid", &acme_vm)])
        .await
        .unwrap_or_default();
    assert!(managed.is_none(), "{managed:?}");
    let mine: Page<ManagedVm> = c.call_as("my_vms", &[]).await.unwrap();
    let names: Vec<&str> = mine.items.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["in-beta"]);
    let requests: Page<RequestSummary> = c.call_as("list_requests", &[]).await.unwrap();
    assert_eq!(requests.items.len(), 1, "{requests:?}");
    let home: HomePanels = c.call_as("home_panels", &[]).await.unwrap();
    assert_eq!(home.vms.items.len(), 1, "{home:?}");
    assert_eq!(home.requests.total, 0, "{home:?}");
    // The second tenant's VM still works for them.
    c.call("get_vm", &[("host_id", &beta_host), ("uuid", &beta_vm)])
        .await
        .unwrap();
}

/// Outside testing: a template description holding `</textarea>` ended the edit form's
/// textarea and injected markup (Leptos writes a textarea's children unescaped).
#[tokio::test]
async fn template_text_is_escaped_inside_the_edit_form() {
    let w = world().await;
    let payload =
        "</textarea><img src=x onerror=alert(1)><form action=/evil><button>Go</button></form>";
    let sizes_before: String = sqlx::query_scalar("SELECT sizes::text FROM templates")
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    w.fleet
        .call(
            "save_template",
            &[
                ("id", &w.template),
                ("name", "Debian 12"),
                ("description", payload),
                ("os", "Debian GNU/Linux 12"),
                ("sizes", "small 1 1 10\nlarge 4 8 50"),
                ("default_lease_days", "30"),
                ("max_lease_days", "90"),
                ("tenants", "acme"),
                ("image_host", &w.host),
                ("image_pool", &w.pool),
                ("image_volume", "debian-12.qcow2"),
            ],
        )
        .await
        .unwrap();
    assert!(!sizes_before.is_empty());
    let html = w.fleet.get("/templates").await.text().await.unwrap();
    assert!(!html.contains("<img src=x"), "markup injected");
    assert!(!html.contains("<form action=/evil"), "form injected");
    assert!(
        html.contains("&lt;/textarea>&lt;img src=x onerror=alert(1)>"),
        "the description is shown as text"
    );
}

/// Browser walkthrough: reverting a snapshot taken before a resize ran the old size while the
/// portal, the ledger and showback kept the new one, and the recount called it consistent.
/// Resize, snapshots and lease changes were missing from the VM's operation log.
#[tokio::test]
async fn a_revert_across_a_resize_carries_the_real_size_and_every_change_is_logged() {
    let w = world().await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    w.set_policy(&w.fleet, "1", "").await;
    let id = id_of(w.submit(&ann, "small", "1", "rv").await);
    let r = w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    let uuid = r.vms[0].uuid.to_string();
    let snap = |op: &'static str| {
        let (ann, uuid) = (ann.clone(), uuid.clone());
        async move {
            ann.call(
                "snapshot_action",
                &[("uuid", &uuid), ("op", op), ("name", "at-small")],
            )
            .await
        }
    };
    snap("create").await.unwrap();
    ann.call(
        "vm_action",
        &[
            ("host_id", &w.host),
            ("uuid", &uuid),
            ("action", "force_off"),
        ],
    )
    .await
    .unwrap();
    ann.call(
        "resize_vm",
        &[("uuid", &uuid), ("vcpus", "2"), ("memory_gib", "2")],
    )
    .await
    .unwrap();
    let vm = || {
        let (ann, uuid) = (ann.clone(), uuid.clone());
        async move {
            ann.call_as::<Option<ManagedVm>>("get_managed_vm", &[("uuid", &uuid)])
                .await
                .unwrap()
                .expect("her VM")
        }
    };
    let v = vm().await;
    assert_eq!((v.vcpus, v.memory_mib), (2, 2048));
    snap("revert").await.unwrap();
    let v = vm().await;
    assert_eq!(
        (v.vcpus, v.memory_mib),
        (1, 1024),
        "the portal follows the revert: {v:?}"
    );
    // The ledger and the hypervisor agree with the record (the revert re-reads the domain).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let recount = w.recount().await;
        if recount.consistent {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{recount:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ann.call("extend_lease", &[("uuid", &uuid), ("days", "1")])
        .await
        .unwrap();
    let page: VmDetail = ann
        .call_as("get_vm", &[("host_id", &w.host), ("uuid", &uuid)])
        .await
        .unwrap();
    let ops: Vec<&str> = page
        .operations
        .iter()
        .map(|o| o.operation.as_str())
        .collect();
    for op in [
        "snapshot create: at-small",
        "force_off",
        "resize",
        "snapshot revert: at-small",
        "lease extended by 1 day",
    ] {
        assert!(ops.contains(&op), "{op} in the operation log: {ops:?}");
    }
    // The recount compares with what the hypervisor runs: a record changed behind its back
    // shows up.
    sqlx::query("UPDATE vms SET vcpus = 3 WHERE uuid = $1::uuid")
        .bind(&uuid)
        .execute(&w.app.db)
        .await
        .unwrap();
    let recount = w.recount().await;
    assert!(!recount.consistent, "{recount:#?}");
    assert!(
        recount.mismatched[0].contains("the hypervisor runs 1 vCPUs"),
        "{recount:#?}"
    );
    w.app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn the_catalog_says_which_sizes_need_approval_and_what_each_costs_a_month() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    // No rate card: the page says why no cost is shown.
    let cat: Vec<Template> = ann.call_as("catalog", &[("tenant_id", &t)]).await.unwrap();
    let offer = cat[0].offer.as_ref().expect("an offer");
    assert!(offer.sizes[0].monthly_cost.is_none(), "{offer:?}");
    assert!(offer.cost_note.as_deref().unwrap().contains("No rate card"));
    // Auto-approval up to 2 vCPUs / 4 GiB, 1 VM, 30 days; a general card in force.
    w.set_policy(&w.fleet, "1", "").await;
    w.fleet
        .call(
            "add_rate_card",
            &[
                ("currency", "EUR"),
                ("vcpu_hour", "0.01"),
                ("memory_gib_hour", "0.005"),
                ("disk_gib_hour", "0.0001"),
                ("valid_from", "2020-01-01"),
            ],
        )
        .await
        .unwrap();
    let cat: Vec<Template> = ann.call_as("catalog", &[("tenant_id", &t)]).await.unwrap();
    let offer = cat[0].offer.as_ref().expect("an offer");
    let sizes: Vec<(&str, bool)> = cat[0]
        .sizes
        .iter()
        .zip(&offer.sizes)
        .map(|(s, o)| (s.name.as_str(), o.needs_approval))
        .collect();
    assert_eq!(sizes, [("small", false), ("large", true)]);
    // small: (1 × 0.01 + 1 × 0.005 + 10 × 0.0001) × 730.5 h = 11.688 → 11.69.
    assert_eq!(
        offer.sizes[0].monthly_cost.as_deref(),
        Some("11.69 EUR a month")
    );
    assert!(offer.cost_note.is_none());
    assert_eq!(
        offer.approval_note,
        "Any size needs approval for more than 1 VM at once or a lease longer than 30 days."
    );
}

#[tokio::test]
async fn approval_levels_come_from_the_forms_rows_with_approvers_picked_from_members() {
    let w = world().await;
    let t = w.tenant.to_string();
    w.app
        .signed_in("lead@example.com", Some((w.tenant, "approver")))
        .await;
    w.app
        .signed_in("cfo@example.com", Some((w.tenant, "tenant_admin")))
        .await;
    w.app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let base = [
        ("tenant_id", t.as_str()),
        ("auto_max_vcpus", "0"),
        ("auto_max_memory_gib", "0"),
        ("auto_max_count", "0"),
        ("auto_max_lease_days", "0"),
        ("expire_days", "7"),
    ];
    let mut form = base.to_vec();
    form.extend([
        ("level[0][mode]", "any"),
        ("level[1][mode]", "all"),
        ("level[1][approvers][]", "lead@example.com"),
        ("level[1][approvers][]", "cfo@example.com"),
        // The empty row the page offers for a new level.
        ("level[2][mode]", ""),
    ]);
    w.fleet.call("set_policy", &form).await.unwrap();
    let q: TenantQuotas = w
        .fleet
        .call_as("tenant_quotas", &[("tenant_id", &t)])
        .await
        .unwrap();
    let p = &q.policy;
    assert_eq!(
        p.levels,
        [
            ApprovalLevel {
                level: 1,
                mode: "any".into(),
                approvers: vec![],
            },
            ApprovalLevel {
                level: 2,
                mode: "all".into(),
                approvers: vec!["cfo@example.com".into(), "lead@example.com".into()],
            },
        ],
        "{p:?}"
    );
    // The page picks approvers from the members who may approve, not from everyone.
    assert_eq!(
        p.eligible_approvers,
        ["cfo@example.com", "lead@example.com"]
    );
    // A requester cannot be made an approver; nothing changes.
    let before = w.app.snapshot().await;
    let mut bad = base.to_vec();
    bad.extend([
        ("level[0][mode]", "any"),
        ("level[0][approvers][]", "ann@example.com"),
    ]);
    let r = w.fleet.call("set_policy", &bad).await;
    assert!(
        assert_field_error(&r, "levels").contains("ann@example.com"),
        "{r:?}"
    );
    assert_eq!(before, w.app.snapshot().await);
}

#[tokio::test]
async fn the_database_allows_the_same_vm_count_per_request_as_the_form() {
    let app = spawn_app().await;
    let def: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'requests_count_check'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    // PostgreSQL writes BETWEEN out as two comparisons.
    assert!(def.contains("(count >= 1)"), "{def}");
    assert!(
        def.contains(&format!(
            "(count <= {})",
            concierge::provisioning::requests::MAX_COUNT
        )),
        "{def}"
    );
}

#[tokio::test]
async fn requester_cloud_config_only_where_the_template_allows_it_and_approvers_read_it() {
    let w = world().await;
    let t = w.tenant.to_string();
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    let (_, appr) = w
        .app
        .signed_in("appr@example.com", Some((w.tenant, "approver")))
        .await;
    let mut form = w.form(&t, "small", "1", "cfg");
    let yaml = "packages: [git]\nruncmd:\n  - [touch, /var/tmp/mine]";
    form.push(("user_data", yaml));
    let counts = "SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM vms)";
    let before = w.app.scalar_i64(counts).await;

    // The template does not allow it yet: refused at the field, nothing stored.
    let r = ann.call("submit_request", &form).await;
    let message = assert_field_error(&r, "user_data");
    assert!(message.contains("does not take"), "{message}");

    // A template without a login user cannot allow it.
    let base = [
        ("id", w.template.as_str()),
        ("name", "Debian 12"),
        ("os", "Debian GNU/Linux 12"),
        ("sizes", "small 1 1 10\nlarge 4 8 50"),
        ("default_lease_days", "30"),
        ("max_lease_days", "90"),
        ("tenants", "acme"),
    ];
    let mut no_user = base.to_vec();
    no_user.push(("allow_user_data", "on"));
    assert_field_error(
        &w.fleet.call("save_template", &no_user).await,
        "allow_user_data",
    );
    let mut allowed = base.to_vec();
    allowed.extend([("login_user", "debian"), ("allow_user_data", "on")]);
    w.fleet.call("save_template", &allowed).await.unwrap();

    // Bad cloud-config is named and changes nothing.
    let huge = format!(
        "write_files:\n{}",
        "  - {path: /x, content: aaaaaaaaaaaaaaaa}\n".repeat(600)
    );
    for bad in [
        "users: [{name: root}]",
        "ssh_authorized_keys: [ssh-ed25519 AAAA evil]",
        "- just\n- a list",
        "runcmd: [unclosed",
        huge.as_str(),
    ] {
        let mut f = w.form(&t, "small", "1", "bad");
        f.push(("user_data", bad));
        assert_field_error(&ann.call("submit_request", &f).await, "user_data");
    }
    assert_eq!(w.app.scalar_i64(counts).await, before, "nothing was stored");

    // Accepted, and the approver reads it in the inbox and on the request before deciding.
    w.set_policy(&w.fleet, "0", "any:").await;
    let id = id_of(ann.call_as("submit_request", &form).await);
    let inbox: Vec<InboxItem> = appr.call_as("approval_inbox", &[]).await.unwrap();
    let item = inbox
        .iter()
        .find(|i| i.request.id.to_string() == id)
        .expect("the request is in the inbox");
    assert_eq!(item.user_data, yaml);
    let detail: RequestDetail = appr.call_as("get_request", &[("id", &id)]).await.unwrap();
    assert_eq!(detail.user_data, yaml);
    let page = appr.get("/approvals").await.text().await.unwrap();
    assert!(
        page.contains("runs as root on first boot"),
        "the inbox warns"
    );
    assert!(
        page.contains("/var/tmp/mine"),
        "the inbox shows the cloud-config"
    );
}

#[tokio::test]
async fn requests_choose_a_template_network_and_placement_follows_it() {
    let w = world().await;
    let t = w.tenant.to_string();
    w.set_policy(&w.fleet, "5", "").await;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((w.tenant, "requester")))
        .await;
    // A second host with its own network (hv2-net) and the same base volume.
    let hv2 = w.add_host("hv2").await;
    let networks_of = |host: String| {
        let app = &w.app;
        async move {
            app.scalar_i64(&format!(
                "SELECT count(*) FROM networks WHERE host_id = '{host}' AND name = 'hv2-net' AND active"
            ))
            .await
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while networks_of(hv2.clone()).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "hv2's network in inventory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.fleet
        .call(
            "create_volume",
            &[
                ("host_id", &hv2),
                ("pool", "hv2-pool"),
                ("name", "debian-12.qcow2"),
                ("kind", "blank"),
                ("capacity_gib", "2"),
                ("source", ""),
            ],
        )
        .await
        .unwrap();
    // The template's image gains a copy on hv2 (the same volume there), and two networks.
    let base = [
        ("id", w.template.as_str()),
        ("name", "Debian 12"),
        ("os", "Debian GNU/Linux 12"),
        ("sizes", "small 1 1 10\nlarge 4 8 50"),
        ("default_lease_days", "30"),
        ("max_lease_days", "90"),
        ("tenants", "acme"),
    ];
    let mut bad = base.to_vec();
    bad.push(("networks", "user, lab net/1"));
    assert_field_error(&w.fleet.call("save_template", &bad).await, "networks");
    let mut with = base.to_vec();
    with.extend([
        ("networks", "user, hv2-net"),
        ("image_host", hv2.as_str()),
        ("image_pool", "hv2-pool"),
        ("image_volume", "debian-12.qcow2"),
    ]);
    w.fleet.call("save_template", &with).await.unwrap();
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM template_images")
            .await,
        2,
        "the template's image is ready on both hosts"
    );
    assert_eq!(w.app.scalar_i64("SELECT count(*) FROM images").await, 1);

    // A network the template does not offer is refused by name; nothing is stored.
    let counts = "SELECT (SELECT count(*) FROM requests) + (SELECT count(*) FROM vms)";
    let before = w.app.scalar_i64(counts).await;
    let mut form = w.form(&t, "small", "1", "labbox");
    form.push(("network", "hv1-net"));
    let message = assert_field_error(&ann.call("submit_request", &form).await, "network");
    assert!(message.contains("user, hv2-net"), "{message}");
    assert_eq!(w.app.scalar_i64(counts).await, before);

    // On hv2-net: only hv2 has it, so the VMs land there (three of them, all on hv2).
    let mut form = w.form(&t, "small", "3", "labbox");
    form.push(("network", "hv2-net"));
    let id = id_of(ann.call_as("submit_request", &form).await);
    let done = w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    assert_eq!(
        done.request.network.as_deref(),
        Some("hv2-net"),
        "the request says its network"
    );
    assert_eq!(
        w.app
            .scalar_i64(&format!(
                "SELECT count(*) FROM vms WHERE network = 'hv2-net' AND host_id = '{hv2}'"
            ))
            .await,
        3
    );
    // The default is the template's first choice: user-mode networking, no network recorded.
    let id = id_of(w.submit(&ann, "small", "1", "plain").await);
    w.wait_for(&ann, &id, RequestState::Fulfilled).await;
    assert_eq!(
        w.app
            .scalar_i64("SELECT count(*) FROM vms WHERE name = 'plain' AND network IS NULL")
            .await,
        1
    );
}

/// Rebalancing advice is the fleet admins': it reads the real allocation (one host here, so
/// nothing to move) and is refused to everyone else.
#[tokio::test]
async fn rebalancing_advice_is_for_fleet_admins() {
    let w = world().await;
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((w.tenant, "tenant_admin")))
        .await;
    let a: app::fleet::Rebalancing = w.fleet.call_as("rebalance_advice", &[]).await.unwrap();
    assert_eq!(a.hosts.len(), 1, "{a:?}");
    assert!(a.moves.is_empty());
    assert!(matches!(
        boss.call("rebalance_advice", &[]).await,
        Err((403, _))
    ));
}

/// A move is checked when asked: a host without the VM's template image is a field error, an
/// unknown VM is not found, and nothing is queued for either.
#[tokio::test]
async fn a_move_to_a_host_without_the_image_is_refused() {
    let w = world().await;
    let (ann, boss) = w.ann_and_boss().await;
    w.set_policy(&boss, "5", "").await;
    let id = w.submit(&ann, "small", "1", "web").await.unwrap();
    w.wait_for(&ann, &id.to_string(), RequestState::Fulfilled)
        .await;
    let vm: Uuid = sqlx::query_scalar("SELECT uuid FROM vms WHERE request_id = $1")
        .bind(id)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    let hv2 = w.add_host("hv2").await;
    let vm = vm.to_string();
    let form = |vm: &str, target: &str| {
        vec![
            ("host_id", w.host.clone()),
            ("uuid", vm.to_string()),
            ("target_host", target.to_string()),
        ]
    };
    let fleet = w.fleet.clone();
    let call = |f: Vec<(&'static str, String)>| {
        let fleet = fleet.clone();
        async move {
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fleet.call("move_vm", &refs).await
        }
    };
    assert_field_error(&call(form(&vm, &hv2)).await, "target_host");
    assert!(matches!(
        call(form(&Uuid::new_v4().to_string(), &hv2)).await,
        Err((404, _))
    ));
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'migrate'")
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}
