//! The authorization matrix: {anonymous, requester of A, tenant admin of A, requester of B,
//! fleet admin} × every operation. Refusals must change nothing; the least-privileged allowed
//! actor must succeed.

use crate::common::*;
use app::fleet::HostSummary;
use app::provisioning::ManagedVm;
use app::Page;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Anonymous,
    RequesterA,
    RequesterB,
    TenantAdminA,
    FleetAdmin,
}
use Who::*;

const EVERYONE: [Who; 5] = [Anonymous, RequesterA, RequesterB, TenantAdminA, FleetAdmin];

struct World {
    app: TestApp,
    tenant_a: Uuid,
    requester_a: Uuid,
    target: Uuid,
    /// An open invitation of requester B (req-b@example.com) into tenant A.
    invitation: Uuid,
    /// Tenant A's alert rule and webhook endpoint (to a documentation address, never called).
    alert_rule: Uuid,
    webhook: Uuid,
    clients: Vec<(Who, Client)>,
}

impl World {
    async fn new() -> World {
        let app = spawn_app().await;
        let tenant_a = app.tenant("Tenant A").await;
        let tenant_b = app.tenant("Tenant B").await;
        let fleet = app.fleet_admin().await;
        let (requester_a, req_a) = app
            .signed_in("req-a@example.com", Some((tenant_a, "requester")))
            .await;
        let (_, admin_a) = app
            .signed_in("admin-a@example.com", Some((tenant_a, "tenant_admin")))
            .await;
        let (_, req_b) = app
            .signed_in("req-b@example.com", Some((tenant_b, "requester")))
            .await;
        // A bystander account for user operations.
        let target = app
            .user("target@example.com", Some((tenant_a, "approver")))
            .await;
        let invitation: Uuid = sqlx::query_scalar(
            "INSERT INTO invitations (tenant_id, email, role, code_hash, expires_at)
             VALUES ($1, 'req-b@example.com', 'requester', 'not-a-real-hash', now() + interval '1 day')
             RETURNING id",
        )
        .bind(tenant_a)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let alert_rule: Uuid = sqlx::query_scalar(
            "INSERT INTO alert_rules (tenant_id, name, subject, metric, above, threshold, for_minutes, severity, created_at)
             VALUES ($1, 'Hot', 'vm', 'cpu', true, 90, 10, 'warning', now()) RETURNING id",
        )
        .bind(tenant_a)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let webhook: Uuid = sqlx::query_scalar(
            "INSERT INTO webhook_endpoints (tenant_id, url, secret, event_types, created_at)
             VALUES ($1, 'https://192.0.2.1/hook', 'whsec_dGVzdA==', '{alert.firing}', now()) RETURNING id",
        )
        .bind(tenant_a)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let clients = vec![
            (Anonymous, app.client()),
            (RequesterA, req_a),
            (RequesterB, req_b),
            (TenantAdminA, admin_a),
            (FleetAdmin, fleet),
        ];
        World {
            app,
            tenant_a,
            requester_a,
            target,
            invitation,
            alert_rule,
            webhook,
            clients,
        }
    }

    fn client(&self, who: Who) -> &Client {
        &self
            .clients
            .iter()
            .find(|(w, _)| *w == who)
            .expect("client")
            .1
    }
}

type Op = fn(&World) -> (String, Vec<(String, String)>);

/// Runs `op` as every actor: refused ones change nothing, allowed ones succeed.
async fn check(name: &str, allowed: &[Who], op: Op) {
    let mut world = World::new().await;
    for who in EVERYONE.iter().copied().filter(|w| !allowed.contains(w)) {
        let (endpoint, form) = op(&world);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let before = world.app.snapshot().await;
        let result = world.client(who).call(&endpoint, &form).await;
        assert_refused(&result, &format!("{name} as {who:?}"));
        assert_eq!(
            before,
            world.app.snapshot().await,
            "{name} as {who:?} changed the database"
        );
    }
    for (i, who) in allowed.iter().enumerate() {
        if i > 0 {
            world = World::new().await;
        }
        let (endpoint, form) = op(&world);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let result = world.client(*who).call(&endpoint, &form).await;
        assert!(
            result.is_ok(),
            "{name} as {who:?} should succeed: {result:?}"
        );
    }
}

fn args(endpoint: &str, pairs: &[(&str, String)]) -> (String, Vec<(String, String)>) {
    (
        endpoint.to_string(),
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

#[tokio::test]
async fn list_tenants() {
    check("list_tenants", &[FleetAdmin], |_| args("list_tenants", &[])).await;
}

#[tokio::test]
async fn create_tenant() {
    check("create_tenant", &[FleetAdmin], |_| {
        args("create_tenant", &[("name", "New Co".into())])
    })
    .await;
}

#[tokio::test]
async fn rename_tenant() {
    check("rename_tenant", &[FleetAdmin], |w| {
        args(
            "rename_tenant",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("name", "Renamed".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn suspend_tenant() {
    check("set_tenant_suspended", &[FleetAdmin], |w| {
        args(
            "set_tenant_suspended",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("suspended", "true".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn get_tenant_and_members() {
    check("get_tenant", &[TenantAdminA, FleetAdmin], |w| {
        args("get_tenant", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
    check("list_members", &[TenantAdminA, FleetAdmin], |w| {
        args("list_members", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
}

#[tokio::test]
async fn add_member() {
    check("add_member", &[TenantAdminA, FleetAdmin], |w| {
        args(
            "add_member",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("email", "newbie@example.com".into()),
                ("display_name", "New Bie".into()),
                ("role", "requester".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn invitations_of_a_tenant_are_its_admins_business() {
    check("list_invitations", &[TenantAdminA, FleetAdmin], |w| {
        args("list_invitations", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
    check("revoke_invitation", &[TenantAdminA, FleetAdmin], |w| {
        args(
            "revoke_invitation",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("id", w.invitation.to_string()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn only_the_invitee_answers_an_invitation() {
    check("accept_invitation", &[RequesterB], |w| {
        args("accept_invitation", &[("id", w.invitation.to_string())])
    })
    .await;
    check("decline_invitation", &[RequesterB], |w| {
        args("decline_invitation", &[("id", w.invitation.to_string())])
    })
    .await;
    check(
        "my_invitations",
        &[RequesterA, RequesterB, TenantAdminA, FleetAdmin],
        |_| args("my_invitations", &[]),
    )
    .await;
}

#[tokio::test]
async fn set_member_role() {
    check("set_member_role", &[TenantAdminA, FleetAdmin], |w| {
        args(
            "set_member_role",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("user_id", w.requester_a.to_string()),
                ("role", "approver".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn remove_member() {
    check("remove_member", &[TenantAdminA, FleetAdmin], |w| {
        args(
            "remove_member",
            &[
                ("tenant_id", w.tenant_a.to_string()),
                ("user_id", w.target.to_string()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn user_administration() {
    check("list_users", &[FleetAdmin], |_| {
        args(
            "list_users",
            &[("search", String::new()), ("page", "1".into())],
        )
    })
    .await;
    check("create_user", &[FleetAdmin], |_| {
        args(
            "create_user",
            &[
                ("email", "made@example.com".into()),
                ("display_name", "Made".into()),
            ],
        )
    })
    .await;
    check("set_fleet_admin", &[FleetAdmin], |w| {
        args(
            "set_fleet_admin",
            &[
                ("user_id", w.target.to_string()),
                ("fleet_admin", "true".into()),
            ],
        )
    })
    .await;
    check("set_user_disabled", &[FleetAdmin], |w| {
        args(
            "set_user_disabled",
            &[
                ("user_id", w.target.to_string()),
                ("disabled", "true".into()),
            ],
        )
    })
    .await;
    check("reset_password", &[FleetAdmin], |w| {
        args("reset_password", &[("user_id", w.target.to_string())])
    })
    .await;
}

#[tokio::test]
async fn audit_log() {
    check(
        "list_audit for tenant A",
        &[TenantAdminA, FleetAdmin],
        |w| args("list_audit", &[("tenant_id", w.tenant_a.to_string())]),
    )
    .await;
    check(
        "list_audit for all tenants",
        &[TenantAdminA, FleetAdmin],
        |_| args("list_audit", &[]),
    )
    .await;
}

#[tokio::test]
async fn audit_chains_and_their_verification() {
    check("audit_chains", &[TenantAdminA, FleetAdmin], |w| {
        args("audit_chains", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
    check("verify_audit", &[TenantAdminA, FleetAdmin], |w| {
        args("verify_audit", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
}

#[tokio::test]
async fn two_factor_policies() {
    check(
        "tenant A's two-factor policy",
        &[TenantAdminA, FleetAdmin],
        |w| {
            args(
                "set_two_factor_policy",
                &[("tenant_id", w.tenant_a.to_string())],
            )
        },
    )
    .await;
    check("the fleet's two-factor policy", &[FleetAdmin], |_| {
        args("set_two_factor_policy", &[])
    })
    .await;
    check(
        "reading tenant A's policy",
        &[TenantAdminA, FleetAdmin],
        |w| {
            args(
                "two_factor_policy",
                &[("tenant_id", w.tenant_a.to_string())],
            )
        },
    )
    .await;
}

#[tokio::test]
async fn own_account_operations_need_a_session() {
    check(
        "my_sessions",
        &[RequesterA, RequesterB, TenantAdminA, FleetAdmin],
        |_| args("my_sessions", &[]),
    )
    .await;
}

#[tokio::test]
async fn nobody_ends_another_users_session() {
    let w = World::new().await;
    let victim: Uuid = sqlx::query_scalar("SELECT id FROM user_sessions WHERE user_id = $1")
        .bind(w.requester_a)
        .fetch_one(&w.app.db)
        .await
        .unwrap();
    for who in [Anonymous, RequesterB, TenantAdminA, FleetAdmin] {
        let before = w.app.snapshot().await;
        let r = w
            .client(who)
            .call("end_session", &[("session_id", &victim.to_string())])
            .await;
        assert_refused(&r, &format!("end_session as {who:?}"));
        assert_eq!(before, w.app.snapshot().await);
    }
    assert_eq!(
        w.client(RequesterA).whoami().await.as_deref(),
        Some("req-a@example.com")
    );
}

#[tokio::test]
async fn fleet_pages_are_refused_to_tenant_users() {
    let w = World::new().await;
    for path in ["/tenants", "/users"] {
        for who in [RequesterA, TenantAdminA] {
            let res = w.client(who).get(path).await;
            assert_eq!(res.status(), 403, "{path} as {who:?}");
        }
        assert_eq!(
            w.client(FleetAdmin).get(path).await.status(),
            200,
            "{path} as fleet admin"
        );
        let anon = w.client(Anonymous).get(path).await;
        assert_eq!(anon.status(), 302, "{path} as anonymous");
        // Signed in, they come back where they were going.
        assert_eq!(
            anon.headers()["location"],
            format!("/login?next=%2F{}", &path[1..])
        );
    }
    let members = format!("/tenants/{}", w.tenant_a);
    assert_eq!(w.client(TenantAdminA).get(&members).await.status(), 200);
    assert_eq!(w.client(RequesterA).get("/audit").await.status(), 403);
}

#[tokio::test]
async fn fleet_operations_are_for_fleet_admins_only() {
    let w = World::new().await;
    let host = Uuid::new_v4().to_string();
    let ops: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("list_hosts", vec![]),
        ("host_page", vec![]),
        ("list_drift", vec![]),
        ("get_host", vec![("host_id", &host)]),
        ("reconcile_host", vec![("host_id", &host)]),
        (
            "register_host",
            vec![("name", "x"), ("uri", "test:///default")],
        ),
    ];
    for (ep, form) in &ops {
        for who in [Anonymous, RequesterA, RequesterB, TenantAdminA] {
            let before = w.app.snapshot().await;
            let r = w.client(who).call(ep, form).await;
            assert_refused(&r, &format!("{ep} as {who:?}"));
            assert_eq!(before, w.app.snapshot().await, "{ep} as {who:?}");
        }
    }
    assert!(w.client(FleetAdmin).call("list_hosts", &[]).await.is_ok());
    assert!(w.client(FleetAdmin).call("list_drift", &[]).await.is_ok());
    let r = w
        .client(FleetAdmin)
        .call("get_host", &[("host_id", &host)])
        .await;
    assert!(matches!(r, Err((404, _))), "{r:?}");
    assert_eq!(w.app.scalar_i64("SELECT count(*) FROM hosts").await, 0);
}

#[tokio::test]
async fn the_server_rendered_navigation_is_complete_for_every_role() {
    // Without JavaScript the navigation is all there is: it must not wait on anything the
    // browser fetches later (the approvals badge once kept an approver's nav from rendering).
    let w = World::new().await;
    for (who, must) in [
        (
            RequesterA,
            vec!["Catalog", "My VMs", "Requests", "Sign out"],
        ),
        (TenantAdminA, vec!["Approvals", "Sign out"]),
        (
            FleetAdmin,
            vec!["Approvals", "Dashboard", "Hosts", "Sign out"],
        ),
    ] {
        let html = w.client(who).get("/").await.text().await.unwrap();
        assert!(
            html.contains(r#"aria-label="Main""#),
            "{who:?}: no navigation"
        );
        for link in must {
            assert!(
                html.contains(link),
                "{who:?}: {link} missing from the navigation"
            );
        }
    }
}

#[tokio::test]
async fn list_images() {
    check("list_images", &[FleetAdmin], |_| args("list_images", &[])).await;
}

/// Every image-library operation is the fleet admins' alone: anyone else is refused before
/// the image, host or volume is even looked at, and nothing changes. (The fleet admin's
/// successful runs of each are in `images.rs`, against a real libvirtd.)
#[tokio::test]
async fn image_library_changes_are_fleet_admins_only() {
    let world = World::new().await;
    let (image, host) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let ops: [(&str, Vec<(&str, &str)>); 7] = [
        (
            "register_image",
            vec![
                ("name", "x"),
                ("host", &host),
                ("pool", "default"),
                ("volume", "x.qcow2"),
            ],
        ),
        (
            "start_image_upload",
            vec![
                ("name", "x"),
                ("host", &host),
                ("pool", "default"),
                ("file_name", "x.qcow2"),
                ("size", "4096"),
            ],
        ),
        (
            "resume_image_upload",
            vec![("image", &image), ("host", &host)],
        ),
        (
            "finish_image_upload",
            vec![("image", &image), ("host", &host)],
        ),
        (
            "discard_image_copy",
            vec![("image", &image), ("host", &host)],
        ),
        (
            "copy_image",
            vec![("image", &image), ("host", &host), ("pool", "default")],
        ),
        ("delete_image", vec![("image", &image)]),
    ];
    for who in [Anonymous, RequesterA, RequesterB, TenantAdminA] {
        for (endpoint, form) in &ops {
            let before = world.app.snapshot().await;
            let result = world.client(who).call(endpoint, form).await;
            assert_refused(&result, &format!("{endpoint} as {who:?}"));
            assert_eq!(
                before,
                world.app.snapshot().await,
                "{endpoint} as {who:?} changed the database"
            );
        }
    }
}

/// Roles × tenant states × VMs, every VM call site against one table: the VM page, its charts,
/// its CPU sparkline, a lifecycle action, a console ticket, a lease extension and the own and
/// tenant-wide VM lists must all agree with `authz::acts_on_vm`. Tenant S is suspended after its
/// VMs are adopted; a call site that forgot suspension, ownership or the tenant admin's reach
/// fails here.
#[tokio::test]
async fn every_vm_call_site_agrees_with_one_rule() {
    use concierge::hypervisor::simulation;
    use std::time::{Duration, Instant};

    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let a = app.tenant("Active").await;
    let s = app.tenant("Suspended").await;
    let b = app.tenant("Elsewhere").await;
    let roles = ["requester", "approver", "manager", "tenant_admin"];
    let mut actors: Vec<(String, Client)> = vec![("fleet admin".into(), fleet.clone())];
    for role in roles {
        let email = format!("{role}@example.com");
        let id = app.user(&email, Some((a, role))).await;
        app.add_membership(s, id, role).await;
        let c = app.client();
        c.login(&email, PASSWORD).await.expect("signs in");
        actors.push((role.to_string(), c));
    }
    let (_, outsider) = app
        .signed_in("outsider@example.com", Some((b, "tenant_admin")))
        .await;
    actors.push(("outsider".into(), outsider));

    let dir = std::env::temp_dir().join(format!("concierge-authz-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = simulation::write_node(&dir, "az", 5).unwrap();
    let host = fleet
        .call_as::<HostSummary>("register_host", &[("name", "az"), ("uri", &uri)])
        .await
        .unwrap()
        .id
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.scalar_i64("SELECT count(*) FROM domains").await < 5 {
        assert!(Instant::now() < deadline, "inventory never arrived");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // (domain, tenant, owner role); az-vm-4 stays drift.
    let vms = [
        ("az-vm-0", Some((a, "requester"))),
        ("az-vm-1", Some((a, "manager"))),
        ("az-vm-2", Some((s, "requester"))),
        ("az-vm-3", Some((s, "manager"))),
        ("az-vm-4", None),
    ];
    let mut uuids = Vec::new();
    for (name, placed) in vms {
        let uuid: String = sqlx::query_scalar("SELECT uuid::text FROM domains WHERE name = $1")
            .bind(name)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if let Some((tenant, owner)) = placed {
            fleet
                .call(
                    "adopt_vm",
                    &[
                        ("host_id", &host),
                        ("uuid", &uuid),
                        ("tenant_id", &tenant.to_string()),
                        ("owner_email", &format!("{owner}@example.com")),
                    ],
                )
                .await
                .expect("adopt");
            // Its portal record, as provisioning leaves one (lists, lease and sparkline read it).
            sqlx::query(
                "INSERT INTO vms (uuid, tenant_id, owner_id, name, vcpus, memory_mib, disk_gib,
                                  host_id, phase, lease_ends_at, created_at, updated_at)
                 SELECT $1::uuid, $2, u.id, $3, 1, 512, 1, $4::uuid, 'running',
                        now() + interval '7 days', now(), now()
                 FROM users u WHERE u.email = $5",
            )
            .bind(&uuid)
            .bind(tenant)
            .bind(name)
            .bind(&host)
            .bind(format!("{owner}@example.com"))
            .execute(&app.db)
            .await
            .unwrap();
        }
        uuids.push(uuid);
    }
    fleet
        .call(
            "set_tenant_suspended",
            &[("tenant_id", &s.to_string()), ("suspended", "true")],
        )
        .await
        .expect("suspend S");

    // The rule, written out: fleet admins act on everything; on portal VMs of a tenant that is
    // not suspended, the owner and the tenant's admins; nobody else.
    let expected = |who: &str, vm: usize| -> bool {
        match (who, vms[vm].1) {
            ("fleet admin", _) => true,
            (_, None) => false,
            (who, Some((tenant, owner))) => {
                tenant == a && roles.contains(&who) && (who == owner || who == "tenant_admin")
            }
        }
    };
    let mut disagreements = Vec::new();
    for (who, c) in &actors {
        let own: Vec<String> = listed(c, false).await;
        let all: Option<Vec<String>> = match c
            .call_as::<Page<ManagedVm>>("my_vms", &[("all", "true")])
            .await
        {
            Ok(v) => Some(uuids_of(&v)),
            Err(_) => None,
        };
        for (i, uuid) in uuids.iter().enumerate() {
            let want = expected(who, i);
            let vm = vms[i].0;
            let mut results: Vec<(&str, bool)> = Vec::new();
            let target = [("host_id", host.as_str()), ("uuid", uuid.as_str())];
            results.push(("get_vm", c.call("get_vm", &target).await.is_ok()));
            results.push(("vm_charts", c.call("vm_charts", &target).await.is_ok()));
            // A lifecycle action and a console ticket: 409 (a stopped domain) comes after the
            // authorisation passed; a refusal is 403 or 404, never anything else.
            for (endpoint, arg) in [
                ("vm_action", ("action", "reboot")),
                ("open_console", ("kind", "serial")),
            ] {
                let r = c
                    .call(endpoint, &[("host_id", &host), ("uuid", uuid), arg])
                    .await;
                match &r {
                    Err((status, _)) if ![403, 404, 409].contains(status) => disagreements
                        .push(format!("{who} on {vm}: {endpoint} refused with {status}")),
                    _ => {}
                }
                results.push((endpoint, r.is_ok() || matches!(r, Err((409, _)))));
            }
            if vms[i].1.is_some() {
                let sparkline = c.get(&format!("/sparklines/cpu/{uuid}")).await.status();
                results.push(("sparkline", sparkline.is_success()));
                let lease = c
                    .call("extend_lease", &[("uuid", uuid), ("days", "1")])
                    .await;
                results.push(("extend_lease", lease.is_ok()));
                // The own list shows the actor's own VMs they may act on; the tenant-wide list
                // the ones they administer.
                let mine = vms[i].1.is_some_and(|(_, owner)| owner == who.as_str());
                let in_own = own.contains(uuid);
                if in_own != (mine && want) {
                    disagreements.push(format!("{who} on {vm}: own list {in_own}"));
                }
                let in_all = all.as_ref().is_some_and(|l| l.contains(uuid));
                let admin = who == "fleet admin" || who == "tenant_admin";
                if in_all != (admin && want) {
                    disagreements.push(format!("{who} on {vm}: tenant-wide list {in_all}"));
                }
            }
            for (site, got) in results {
                if got != want {
                    disagreements.push(format!(
                        "{who} on {vm}: {site} says {got}, rule says {want}"
                    ));
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "call sites disagree with the rule:\n{}",
        disagreements.join("\n")
    );
}

/// The VMs of `my_vms`; none when the list is refused.
async fn listed(c: &Client, all: bool) -> Vec<String> {
    c.call_as::<Page<ManagedVm>>("my_vms", &[("all", if all { "true" } else { "false" })])
        .await
        .map(|page| uuids_of(&page))
        .unwrap_or_default()
}

fn uuids_of(page: &Page<ManagedVm>) -> Vec<String> {
    page.items.iter().map(|vm| vm.uuid.to_string()).collect()
}

// One test per operation: every `check` starts a server per allowed role, and they all live
// until the test ends (four checks in one test once exhausted PostgreSQL's connections).
const SIGNED_IN: [Who; 4] = [RequesterA, RequesterB, TenantAdminA, FleetAdmin];

#[tokio::test]
async fn own_notifications_need_a_session() {
    check("my_notifications", &SIGNED_IN, |_| {
        args("my_notifications", &[])
    })
    .await;
}

#[tokio::test]
async fn the_unread_count_needs_a_session() {
    check("unread_notifications", &SIGNED_IN, |_| {
        args("unread_notifications", &[])
    })
    .await;
}

#[tokio::test]
async fn notification_preferences_need_a_session() {
    check("notification_preferences", &SIGNED_IN, |_| {
        args("notification_preferences", &[])
    })
    .await;
}

#[tokio::test]
async fn setting_notification_preferences_needs_a_session() {
    check("set_notification_preferences", &SIGNED_IN, |_| {
        args(
            "set_notification_preferences",
            &[("in_app[]", "lease_reminder".into())],
        )
    })
    .await;
}

#[tokio::test]
async fn nobody_reads_or_marks_another_users_notification() {
    let w = World::new().await;
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO notifications (user_id, kind, title, link, in_app, created_at)
         VALUES ($1, 'lease_reminder', 'web-1: its lease ends soon', '/vms', true, now()) RETURNING id",
    )
    .bind(w.requester_a)
    .fetch_one(&w.app.db)
    .await
    .unwrap();
    for who in [Anonymous, RequesterB, TenantAdminA, FleetAdmin] {
        let r = w
            .client(who)
            .call("mark_notifications_read", &[("id", &id.to_string())])
            .await;
        assert_refused(&r, &format!("mark_notifications_read as {who:?}"));
        if who != Anonymous {
            let seen: Vec<app::notifications::Notification> = w
                .client(who)
                .call_as("my_notifications", &[])
                .await
                .unwrap();
            assert!(
                seen.iter().all(|n| n.id != id),
                "{who:?} sees requester A's notification"
            );
        }
    }
    let read: Option<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT read_at FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(&w.app.db)
            .await
            .unwrap();
    assert!(read.is_none(), "nobody else marked it read");
    w.client(RequesterA)
        .call("mark_notifications_read", &[("id", &id.to_string())])
        .await
        .unwrap();
}

// Operations automation (issue 18): webhooks, reclamation, alerts, runways, rebalancing.
const ADMINS_OF_A: [Who; 2] = [TenantAdminA, FleetAdmin];

#[tokio::test]
async fn webhooks_are_for_admins() {
    check("webhooks", &ADMINS_OF_A, |_| args("webhooks", &[])).await;
}

#[tokio::test]
async fn adding_a_tenant_webhook() {
    check("add_webhook", &ADMINS_OF_A, |w| {
        args(
            "add_webhook",
            &[
                ("scope", w.tenant_a.to_string()),
                ("url", "https://192.0.2.10/hook".into()),
                ("events[]", "alert.firing".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn adding_a_fleet_webhook() {
    check("add_webhook (fleet)", &[FleetAdmin], |_| {
        args(
            "add_webhook",
            &[
                ("scope", "fleet".into()),
                ("url", "https://192.0.2.10/hook".into()),
                ("events[]", "host.lost".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn turning_a_webhook_off() {
    check("set_webhook_enabled", &ADMINS_OF_A, |w| {
        args(
            "set_webhook_enabled",
            &[("id", w.webhook.to_string()), ("enabled", "false".into())],
        )
    })
    .await;
}

#[tokio::test]
async fn removing_a_webhook() {
    check("remove_webhook", &ADMINS_OF_A, |w| {
        args("remove_webhook", &[("id", w.webhook.to_string())])
    })
    .await;
}

fn rule_form(scope: String) -> Vec<(&'static str, String)> {
    vec![
        ("scope", scope),
        ("kind", "idle".into()),
        ("days", "14".into()),
        ("action", "stop".into()),
    ]
}

#[tokio::test]
async fn reclamation_is_for_admins() {
    check("reclamation", &ADMINS_OF_A, |_| args("reclamation", &[])).await;
}

#[tokio::test]
async fn a_reclamation_dry_run() {
    check("preview_reclamation_rule", &ADMINS_OF_A, |w| {
        args(
            "preview_reclamation_rule",
            &rule_form(w.tenant_a.to_string()),
        )
    })
    .await;
}

#[tokio::test]
async fn saving_a_tenant_reclamation_rule() {
    check("save_reclamation_rule", &ADMINS_OF_A, |w| {
        args("save_reclamation_rule", &rule_form(w.tenant_a.to_string()))
    })
    .await;
}

#[tokio::test]
async fn saving_the_fleet_default_reclamation_rule() {
    check("save_reclamation_rule (fleet)", &[FleetAdmin], |_| {
        args("save_reclamation_rule", &rule_form("fleet".into()))
    })
    .await;
}

#[tokio::test]
async fn own_reclamation_proposals_need_a_session() {
    check("my_reclamation_proposals", &SIGNED_IN, |_| {
        args("my_reclamation_proposals", &[])
    })
    .await;
}

#[tokio::test]
async fn alerts_are_for_admins() {
    check("alerts", &ADMINS_OF_A, |_| args("alerts", &[])).await;
}

#[tokio::test]
async fn adding_a_tenant_alert_rule() {
    check("add_alert_rule", &ADMINS_OF_A, |w| {
        args(
            "add_alert_rule",
            &[
                ("scope", w.tenant_a.to_string()),
                ("name", "Busy".into()),
                ("subject", "vm".into()),
                ("metric", "cpu".into()),
                ("direction", "above".into()),
                ("threshold", "80".into()),
                ("for_minutes", "10".into()),
                ("severity", "warning".into()),
            ],
        )
    })
    .await;
}

#[tokio::test]
async fn removing_an_alert_rule() {
    check("remove_alert_rule", &ADMINS_OF_A, |w| {
        args("remove_alert_rule", &[("id", w.alert_rule.to_string())])
    })
    .await;
}

#[tokio::test]
async fn a_tenants_runway() {
    check("capacity_runway", &ADMINS_OF_A, |w| {
        args("capacity_runway", &[("tenant_id", w.tenant_a.to_string())])
    })
    .await;
}

#[tokio::test]
async fn the_fleets_runway() {
    check("capacity_runway (fleet)", &[FleetAdmin], |_| {
        args("capacity_runway", &[])
    })
    .await;
}

#[tokio::test]
async fn rebalancing_advice() {
    check("rebalance_advice", &[FleetAdmin], |_| {
        args("rebalance_advice", &[])
    })
    .await;
}
