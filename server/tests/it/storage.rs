//! Storage pools and volumes through the portal, on libvirt's test driver.

use crate::common::*;
use app::fleet::{HostDetail, HostSummary, VolumeInfo};
use concierge::hypervisor::simulation;

#[tokio::test]
async fn pools_volumes_clones_and_copies() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let t = app.tenant("A").await;
    let (_, tadmin) = app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    let dir = std::env::temp_dir().join(format!(
        "concierge-storage-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = simulation::write_node(&dir, "st", 1).unwrap();
    let host: HostSummary = fleet
        .call_as("register_host", &[("name", "st"), ("uri", &uri)])
        .await
        .unwrap();
    let h = host.id.to_string();

    let before = app.snapshot().await;
    let r = fleet
        .call(
            "create_pool",
            &[
                ("host_id", &h),
                ("name", "../etc"),
                ("path", "relative/path"),
            ],
        )
        .await;
    assert_field_error(&r, "name");
    assert_field_error(&r, "path");
    assert_refused(
        &tadmin
            .call(
                "create_pool",
                &[("host_id", &h), ("name", "images"), ("path", "/srv/images")],
            )
            .await,
        "tenant admin",
    );
    assert_eq!(before, app.snapshot().await);

    fleet
        .call(
            "create_pool",
            &[("host_id", &h), ("name", "images"), ("path", "/srv/images")],
        )
        .await
        .unwrap();
    let d: HostDetail = fleet.call_as("get_host", &[("host_id", &h)]).await.unwrap();
    assert!(
        d.pools.iter().any(|p| p.name == "images" && p.active),
        "{d:?}"
    );

    let vol = |name: &'static str, kind: &'static str, cap: &'static str, src: &'static str| {
        vec![
            ("host_id", h.clone()),
            ("pool", "images".into()),
            ("name", name.into()),
            ("kind", kind.into()),
            ("capacity_gib", cap.into()),
            ("source", src.into()),
        ]
    };
    let call = |form: Vec<(&'static str, String)>| {
        let fleet = &fleet;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            fleet.call("create_volume", &form).await
        }
    };
    assert_field_error(
        &call(vol("base.qcow2", "blank", "0", "")).await,
        "capacity_gib",
    );
    assert_field_error(
        &call(vol("base.qcow2", "blank", "-5", "")).await,
        "capacity_gib",
    );
    assert_field_error(&call(vol("base.qcow2", "magic", "1", "")).await, "kind");
    assert_field_error(&call(vol("a/b", "blank", "1", "")).await, "name");
    call(vol("base.qcow2", "blank", "10", "")).await.unwrap();
    call(vol("vm-1.qcow2", "linked", "", "base.qcow2"))
        .await
        .unwrap();
    call(vol("vm-2.qcow2", "copy", "", "base.qcow2"))
        .await
        .unwrap();
    let r = call(vol("vm-3.qcow2", "linked", "", "missing.qcow2")).await;
    assert!(
        assert_field_error(&r, "name").starts_with("libvirt refused"),
        "{r:?}"
    );
    let list: Vec<VolumeInfo> = fleet
        .call_as("list_volumes", &[("host_id", &h), ("pool", "images")])
        .await
        .unwrap();
    let names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["base.qcow2", "vm-1.qcow2", "vm-2.qcow2"]);
    assert_eq!(list[0].capacity_bytes, 10u64 << 30);
    // The linked clone's base is in use; a copy is not.
    assert_eq!(list[0].used_by, ["backing file of vm-1.qcow2"], "{list:?}");
    assert_eq!(list[2].used_by, Vec::<String>::new());
    let delete = |name: &'static str, confirm: &'static str| {
        let (fleet, h) = (&fleet, h.clone());
        async move {
            fleet
                .call(
                    "delete_volume",
                    &[
                        ("host_id", &h),
                        ("pool", "images"),
                        ("name", name),
                        ("confirm", confirm),
                    ],
                )
                .await
        }
    };
    // Deleting asks for the name, and refuses what something depends on.
    assert_eq!(
        assert_field_error(&delete("vm-2.qcow2", "").await, "confirm"),
        "Type the volume's name, vm-2.qcow2, to confirm."
    );
    let refused = delete("base.qcow2", "base.qcow2").await;
    assert!(
        matches!(&refused, Err((409, app::error::AppError::Conflict(m))) if m.contains("backing file of vm-1.qcow2")),
        "{refused:?}"
    );
    delete("vm-2.qcow2", "vm-2.qcow2").await.unwrap();
    let list: Vec<VolumeInfo> = fleet
        .call_as("list_volumes", &[("host_id", &h), ("pool", "images")])
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    let actions = app.audit_actions().await;
    for a in ["pool.create", "volume.create", "volume.delete"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn virtual_networks_define_start_stop_delete() {
    let app = spawn_app().await;
    let fleet = app.fleet_admin().await;
    let dir =
        std::env::temp_dir().join(format!("concierge-nets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri = simulation::write_node(&dir, "nets", 0).unwrap();
    let host: HostSummary = fleet
        .call_as("register_host", &[("name", "nets"), ("uri", &uri)])
        .await
        .unwrap();
    let h = host.id.to_string();
    let before = app.snapshot().await;
    let r = fleet
        .call(
            "define_network",
            &[
                ("host_id", &h),
                ("name", "lab"),
                ("mode", "nat"),
                ("address", "8.8.8.1"),
                ("prefix", "24"),
            ],
        )
        .await;
    assert!(assert_field_error(&r, "address").contains("private"));
    let r = fleet
        .call(
            "define_network",
            &[
                ("host_id", &h),
                ("name", "lab"),
                ("mode", "nat"),
                ("address", "10.40.0.1"),
                ("prefix", "8"),
            ],
        )
        .await;
    assert_field_error(&r, "prefix");
    let r = fleet
        .call(
            "network_action",
            &[("host_id", &h), ("name", "lab"), ("op", "explode")],
        )
        .await;
    assert_field_error(&r, "op");
    assert_eq!(before, app.snapshot().await);
    fleet
        .call(
            "define_network",
            &[
                ("host_id", &h),
                ("name", "lab"),
                ("mode", "nat"),
                ("address", "10.40.0.1"),
                ("prefix", "24"),
            ],
        )
        .await
        .unwrap();
    let r = fleet
        .call(
            "define_network",
            &[
                ("host_id", &h),
                ("name", "lab"),
                ("mode", "isolated"),
                ("address", "10.41.0.1"),
                ("prefix", "24"),
            ],
        )
        .await;
    assert!(
        assert_field_error(&r, "name").starts_with("libvirt refused"),
        "{r:?}"
    );
    fleet
        .call(
            "network_action",
            &[("host_id", &h), ("name", "lab"), ("op", "start")],
        )
        .await
        .unwrap();
    let active = || async {
        let d: HostDetail = fleet.call_as("get_host", &[("host_id", &h)]).await.unwrap();
        d.networks
            .into_iter()
            .find(|n| n.name == "lab")
            .map(|n| (n.active, n.forward_mode, n.missing))
    };
    assert_eq!(active().await, Some((true, Some("nat".to_string()), false)));
    fleet
        .call(
            "network_action",
            &[("host_id", &h), ("name", "lab"), ("op", "stop")],
        )
        .await
        .unwrap();
    assert_eq!(active().await.map(|a| a.0), Some(false));
    fleet
        .call(
            "network_action",
            &[("host_id", &h), ("name", "lab"), ("op", "delete")],
        )
        .await
        .unwrap();
    assert_eq!(
        active().await.map(|a| a.2),
        Some(true),
        "a deleted network is kept as missing"
    );
    let t = app.tenant("A").await;
    let (_, tadmin) = app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    assert_refused(
        &tadmin
            .call(
                "network_action",
                &[("host_id", &h), ("name", "lab"), ("op", "start")],
            )
            .await,
        "tenant admin",
    );
    app.state.hypervisors.stop_all();
}
