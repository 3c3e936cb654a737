//! Cold migration on the real libvirtd (opt-in like `libvirtd`): a portal VM asked to move
//! while running waits for its owner to shut it down, then moves — its disk copied into the
//! second host's pool and rebased onto that host's copy of the base image, the domain defined
//! there and gone from the first, the old volume removed — and starts on its new host.

use crate::common::*;
use crate::images::{SECOND_POOL, SECOND_POOL_DIR, SECOND_URI};
use crate::libvirtd::{
    auto_approve, catalog, enabled, on_libvirt, request_form, tag, wait_host, wait_request,
    wait_until, Leftovers, ONE_AT_A_TIME, POOL,
};
use app::fleet::HostSummary;
use app::states::RequestState;
use concierge::hypervisor::storage;
use concierge::provisioning::provisioner::volume_name;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Volumes of the second pool to remove when the test ends, passed or not.
struct SecondPool(Vec<String>);

impl Drop for SecondPool {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        let Ok(conn) = virt::connect::Connect::open(Some(crate::libvirtd::URI)) else {
            return;
        };
        for n in names {
            let _ = storage::delete_volume(&conn, SECOND_POOL, &n);
        }
        concierge::hypervisor::events::close(conn);
    }
}

async fn host_of(app: &TestApp, vm: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT host_id FROM vms WHERE uuid = $1")
        .bind(vm)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_vm_moves_to_another_host_when_off_and_runs_there() {
    if !enabled("a_vm_moves_to_another_host_when_off_and_runs_there") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let tenant = app.tenant("Acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((tenant, "requester")))
        .await;
    let t = tag();
    let base = format!("cct{t}-base.qcow2");
    let (host, template) = catalog(&admin, &base, &mut leftovers).await;
    auto_approve(&admin, tenant).await;

    // The second host: the same daemon through its socket, with its own pool holding a copy
    // of the base image (what an image copy would have put there).
    let second_base = format!("cct{t}-base-b.qcow2");
    let mut second_pool = SecondPool(vec![second_base.clone()]);
    let b = base.clone();
    let sb = second_base.clone();
    on_libvirt(move |c| {
        if c.lookup_storage_pool_by_name(SECOND_POOL).is_err() {
            storage::create_dir_pool(c, SECOND_POOL, SECOND_POOL_DIR).expect("second pool");
        }
        let src = c
            .lookup_storage_pool_by_name(POOL)
            .unwrap()
            .lookup_storage_vol_by_name(&b)
            .unwrap();
        let dst = c.lookup_storage_pool_by_name(SECOND_POOL).unwrap();
        let info = src.info().unwrap();
        virt::storage_vol::StorageVol::create_xml_from(
            &dst,
            &storage::volume_xml(&sb, info.capacity, storage::Format::Qcow2, None),
            &src,
            0,
        )
        .expect("the base on the second pool");
    })
    .await;
    let second = admin
        .call_as::<HostSummary>(
            "register_host",
            &[
                ("name", "second"),
                ("uri", SECOND_URI),
                ("schedulable", "true"),
            ],
        )
        .await
        .expect("register the second host")
        .id;
    wait_host(&admin, &second.to_string(), "connected", 20).await;
    admin
        .call("reconcile_host", &[("host_id", &second.to_string())])
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO image_copies (image_id, host_id, pool, volume)
         SELECT image_id, $2, $3, $4 FROM templates WHERE id = $1::uuid",
    )
    .bind(&template)
    .bind(second)
    .bind(SECOND_POOL)
    .bind(&second_base)
    .execute(&app.db)
    .await
    .unwrap();

    // A VM on the first host, running.
    let ts = tenant.to_string();
    let prefix = format!("cct{t}");
    let id = ann
        .call_as::<Uuid>("submit_request", &request_form(&ts, &template, &prefix))
        .await
        .expect("submit")
        .to_string();
    let vm: Uuid = sqlx::query_scalar("SELECT uuid FROM vms WHERE request_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    leftovers.domains.push(vm);
    leftovers.volumes.push(volume_name(vm));
    second_pool.0.push(volume_name(vm));
    wait_request(&ann, &id, RequestState::Fulfilled, 60).await;
    let first: Uuid = host.parse().unwrap();
    assert_eq!(host_of(&app, vm).await, first);
    let (h, v, s) = (host.clone(), vm.to_string(), second.to_string());
    let form = |target: &str| {
        vec![
            ("host_id", h.clone()),
            ("uuid", v.clone()),
            ("target_host", target.to_string()),
        ]
    };
    let call = |c: &Client, f: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let refs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.call("move_vm", &refs).await
        }
    };
    // Only fleet admins move VMs; not to the host it is on.
    assert!(matches!(call(&ann, form(&s)).await, Err((403, _))));
    assert_field_error(&call(&admin, form(&host)).await, "target_host");

    // Asked while running: it waits, and the owner is told.
    call(&admin, form(&s)).await.expect("move_vm");
    assert!(matches!(call(&admin, form(&s)).await, Err((409, _))));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(host_of(&app, vm).await, first, "a running VM does not move");
    let told: Vec<app::notifications::Notification> =
        ann.call_as("my_notifications", &[]).await.unwrap();
    assert!(
        told.iter()
            .any(|n| n.title.contains("will move to another host")),
        "{told:?}"
    );

    // The owner shuts it down: it moves.
    ann.call(
        "vm_action",
        &[("host_id", &host), ("uuid", &v), ("action", "force_off")],
    )
    .await
    .expect("force off");
    let moved_at = Instant::now();
    // The job looks again every 30 s while it waits: wake it now rather than wait.
    sqlx::query(
        "UPDATE jobs SET run_at = now() WHERE kind = 'migrate' AND key = $1 AND state = 'queued'",
    )
    .bind(vm)
    .execute(&app.db)
    .await
    .unwrap();
    app.state.queue.wake.notify_waiters();
    wait_until!(60, "the VM on the second host", {
        (host_of(&app, vm).await == second).then_some(())
    });
    // The source's copies are removed after the VM's row moves: wait for the whole job.
    wait_until!(60, "the migrate job done", {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM jobs WHERE kind = 'migrate' AND key = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(vm)
        .fetch_optional(&app.db)
        .await
        .unwrap();
        (state.as_deref() == Some("done")).then_some(())
    });
    crate::libvirtd::measure(
        "move of a shut-off VM (1 GiB blank disk)",
        moved_at.elapsed(),
    );

    // On the daemon: the disk in the second pool, backed by the second pool's base; the old
    // volume gone; the domain runs on the new disk.
    let (vol, sb) = (volume_name(vm), second_base.clone());
    let (xml, backing, old_gone, dom_xml) = on_libvirt(move |c| {
        let pool = c.lookup_storage_pool_by_name(SECOND_POOL).unwrap();
        let _ = pool.refresh(0);
        let moved = pool
            .lookup_storage_vol_by_name(&vol)
            .expect("the moved disk");
        let base_path = pool
            .lookup_storage_vol_by_name(&sb)
            .unwrap()
            .path()
            .unwrap();
        let first = c.lookup_storage_pool_by_name(POOL).unwrap();
        let _ = first.refresh(0);
        (
            moved.xml_desc(0).unwrap(),
            base_path,
            first.lookup_storage_vol_by_name(&vol).is_err(),
            c.lookup_domain_by_uuid(vm).unwrap().xml_desc(0).unwrap(),
        )
    })
    .await;
    assert!(
        xml.contains("<backingStore>") && xml.contains(&format!("<path>{backing}</path>")),
        "rebased onto the second pool's base: {xml}"
    );
    assert!(old_gone, "the first pool's copy is removed");
    assert!(
        dom_xml.contains(&format!("{SECOND_POOL_DIR}/{}", volume_name(vm))),
        "{dom_xml}"
    );
    let info = std::process::Command::new("qemu-img")
        .args(["check", &format!("{SECOND_POOL_DIR}/{}", volume_name(vm))])
        .output()
        .expect("qemu-img");
    assert!(info.status.success(), "{info:?}");

    // Started on its new host through the portal: it runs.
    ann.call(
        "vm_action",
        &[("host_id", &s), ("uuid", &v), ("action", "start")],
    )
    .await
    .expect("start on the second host");
    let running =
        on_libvirt(move |c| c.lookup_domain_by_uuid(vm).unwrap().is_active().unwrap()).await;
    assert!(running);
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM domain_operations WHERE domain_uuid = $1 AND host_id = $2 AND operation = 'migrate'",
    )
    .bind(vm)
    .bind(second)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(logged, 1);
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action IN ('vm.migrate.request', 'vm.migrate')",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 2);
}
