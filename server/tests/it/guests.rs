//! Real guests on a real libvirtd + QEMU (TCG): the Debian 12 image `scripts/guest-image`
//! builds, a template that takes cloud-init, and the requester logging into the VM with their
//! own SSH key: the end state the portal exists for. Opt-in like `libvirtd` (same switch).
use crate::common::*;
use crate::libvirtd::{
    ensure_pool, measure, on_libvirt, register_local_host, tag, timeline, wait_host, wait_request,
    wait_until, Leftovers, ONE_AT_A_TIME, POOL,
};
use app::account::SshKey;
use app::provisioning::{ManagedVm, RequestDetail};
use app::states::RequestState;
use concierge::hypervisor::storage;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn image_dir() -> PathBuf {
    std::env::var_os("CONCIERGE_GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.data/guest-image"))
}

/// A fresh ed25519 key pair in `dir`; returns (private key path, public key line).
fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("{name}@test"))
        .arg("-f")
        .arg(&path)
        .status()
        .expect("ssh-keygen runs")
        .success();
    assert!(ok, "ssh-keygen");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_string())
}

/// Runs `command` on the guest as `user` with `key`; (exit code, stdout, stderr).
fn ssh(key: &Path, port: u16, user: &str, command: &str) -> (i32, String, String) {
    let out = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .expect("ssh runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The guest's ed25519 host key, as ssh-keyscan reads it.
fn host_key(port: u16) -> String {
    let out = Command::new("ssh-keyscan")
        .args(["-t", "ed25519", "-p", &port.to_string(), "127.0.0.1"])
        .output()
        .expect("ssh-keyscan runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

async fn managed(c: &Client, uuid: Uuid) -> ManagedVm {
    c.call_as::<Option<ManagedVm>>("get_managed_vm", &[("uuid", &uuid.to_string())])
        .await
        .expect("get_managed_vm")
        .expect("the owner sees the VM")
}

#[tokio::test]
async fn a_requester_logs_into_their_new_debian_vm_with_their_own_key() {
    if !crate::libvirtd::enabled("a_requester_logs_into_their_new_debian_vm_with_their_own_key") {
        return;
    }
    let images = image_dir();
    for f in ["debian-12.qcow2", "debian-12.vmlinuz", "debian-12.initrd"] {
        assert!(
            images.join(f).is_file(),
            "{} is missing: run scripts/guest-image (scripts/test does)",
            images.join(f).display()
        );
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let app = spawn_app_with(|c| {
        // A range of its own: the unique index holds per database, the bind check per machine.
        c.ssh_port_min = 23000 + (rand_u16() % 500) * 2;
        c.ssh_port_max = c.ssh_port_min + 20;
    })
    .await;
    let admin = app.fleet_admin().await;
    let tenant = app.tenant("Acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((tenant, "requester")))
        .await;
    let (_, bob) = app
        .signed_in("bob@example.com", Some((tenant, "requester")))
        .await;

    // The host runs real guests by emulation here (KVM is offered but cannot run them).
    on_libvirt(ensure_pool).await;
    let host = register_local_host(&admin).await;
    wait_host(&admin, &host, "connected", 20).await;
    admin
        .call(
            "set_host_domain_type",
            &[("host_id", &host), ("domain_type", "qemu")],
        )
        .await
        .expect("set the domain type");
    let bad = admin
        .call(
            "set_host_domain_type",
            &[("host_id", &host), ("domain_type", "xen")],
        )
        .await;
    assert_field_error(&bad, "domain_type");

    // The image: disk, kernel and initramfs uploaded to the pool through libvirt.
    let t = tag();
    let names = [
        format!("cct{t}-debian.qcow2"),
        format!("cct{t}-debian.vmlinuz"),
        format!("cct{t}-debian.initrd"),
    ];
    leftovers.volumes.extend(names.iter().cloned());
    let (dir, files) = (images.clone(), names.clone());
    let t0 = Instant::now();
    on_libvirt(move |c| {
        for ((file, format), name) in [
            ("debian-12.qcow2", storage::Format::Qcow2),
            ("debian-12.vmlinuz", storage::Format::Raw),
            ("debian-12.initrd", storage::Format::Raw),
        ]
        .into_iter()
        .zip(files.iter())
        {
            let f = std::fs::File::open(dir.join(file)).expect("image file");
            let len = f.metadata().expect("size").len();
            storage::upload_volume(c, POOL, name, format, f, len)
                .unwrap_or_else(|e| panic!("upload {name}: {}", e.message()));
        }
    })
    .await;
    measure("upload the Debian image (3 volumes)", t0.elapsed());
    admin
        .call("reconcile_host", &[("host_id", &host)])
        .await
        .expect("reconcile");

    // A template that takes cloud-init, with a snippet of the admin's.
    let snippet = "runcmd:\n  - [touch, /var/tmp/snippet-ran]";
    let template = admin
        .call_as::<Uuid>(
            "save_template",
            &[
                ("name", "Debian 12"),
                ("description", "Debian with cloud-init"),
                ("os", "Debian 12"),
                ("sizes", "small 1 0.5 4"),
                ("default_lease_days", "30"),
                ("max_lease_days", "90"),
                ("tenants", "*"),
                ("image_host", &host),
                ("image_pool", POOL),
                ("image_volume", &names[0]),
                ("image_kernel", &names[1]),
                ("image_initrd", &names[2]),
                ("login_user", "debian"),
                ("user_data", snippet),
                ("allow_user_data", "on"),
            ],
        )
        .await
        .expect("save_template")
        .to_string();
    admin
        .call(
            "publish_template",
            &[("id", &template), ("published", "true")],
        )
        .await
        .expect("publish");
    admin
        .call(
            "set_policy",
            &[
                ("tenant_id", &tenant.to_string()),
                ("auto_max_vcpus", "2"),
                ("auto_max_memory_gib", "2"),
                ("auto_max_count", "2"),
                ("auto_max_lease_days", "30"),
                ("expire_days", "7"),
                ("levels", ""),
            ],
        )
        .await
        .expect("set_policy");

    // Ann's key on her account; Bob's on his.
    let keys = tempdir();
    let (ann_key, ann_pub) = keypair(&keys, "ann");
    let (bob_key, bob_pub) = keypair(&keys, "bob");
    let added: SshKey = ann
        .call_as("add_ssh_key", &[("key", &ann_pub)])
        .await
        .expect("add ann's key");
    assert!(added.fingerprint.starts_with("SHA256:"));
    bob.call("add_ssh_key", &[("key", &bob_pub)])
        .await
        .expect("add bob's key");

    // Two VMs from one image, side by side.
    let prefix = format!("cct{t}");
    let ts = tenant.to_string();
    let submitted = Instant::now();
    let id = ann
        .call_as::<Uuid>(
            "submit_request",
            &[
                ("tenant_id", ts.as_str()),
                ("template_id", &template),
                ("size", "small"),
                ("count", "2"),
                ("name_prefix", &prefix),
                ("lease_days", ""),
                ("purpose", "Logging in"),
                // Ann's own cloud-config: its runcmd joins the template's.
                ("user_data", "runcmd:\n  - [touch, /var/tmp/requester-ran]"),
            ],
        )
        .await
        .expect("submit")
        .to_string();
    let uuids: Vec<Uuid> =
        sqlx::query_scalar("SELECT uuid FROM vms WHERE request_id = $1::uuid ORDER BY name")
            .bind(&id)
            .fetch_all(&app.db)
            .await
            .expect("VM rows");
    assert_eq!(uuids.len(), 2);
    for u in &uuids {
        leftovers.domains.push(*u);
        leftovers
            .volumes
            .push(concierge::provisioning::provisioner::volume_name(*u));
        leftovers
            .volumes
            .push(concierge::catalog::cloud_init::seed_volume(*u));
    }
    let r = wait_request(&ann, &id, RequestState::Fulfilled, 180).await;
    measure("submit -> fulfilled (two Debian VMs)", submitted.elapsed());

    // Until the guests answer on SSH, the VM page says they are booting.
    let first = managed(&ann, uuids[0]).await;
    let access = first
        .ssh
        .clone()
        .expect("an SSH command for a cloud-init template");
    assert_eq!(access.user, "debian");
    assert_eq!(access.host, "127.0.0.1");

    let mut vms = Vec::new();
    for u in &uuids {
        let vm = wait_until!(420, format!("{u} to answer on SSH"), {
            let vm = managed(&ann, *u).await;
            vm.ssh
                .as_ref()
                .and_then(|s| s.ready_at)
                .is_some()
                .then_some(vm)
        });
        vms.push(vm);
    }
    measure("submit -> SSH answers (both VMs)", submitted.elapsed());
    let r2: RequestDetail = ann
        .call_as("get_request", &[("id", &id)])
        .await
        .expect("get_request");
    eprint!("{}{}", timeline(&r), timeline(&r2));

    let mut host_keys = Vec::new();
    for vm in &vms {
        let s = vm.ssh.clone().expect("ssh");
        assert_eq!(
            s.command(),
            format!("ssh -p {} debian@127.0.0.1", s.port),
            "the VM page's command"
        );
        // Ann's key logs in, and the guest is named after the VM.
        let (code, out, err) = ssh(&ann_key, s.port, "debian", "hostname");
        assert_eq!(code, 0, "ann's key logs in to {}: {err}", vm.name);
        assert_eq!(out, vm.name);
        // The admin's snippet ran (in cloud-init's last stage, which may still be running
        // when sshd answers), and sudo works without a password.
        // Seen once under load: the check failed right after login and passed on the next
        // runs. It is asked a few times, and what the guest said is kept for the message.
        let mut said = String::new();
        let mut ran = false;
        for _ in 0..5 {
            let (code, out, err) = ssh(
                &ann_key,
                s.port,
                "debian",
                "sudo -n cloud-init status --wait; ls /var/tmp; sudo -n test -f /var/tmp/snippet-ran && test -f /var/tmp/requester-ran",
            );
            said = format!("exit {code}: {out} {err}");
            if code == 0 {
                ran = true;
                break;
            }
            eprintln!("snippet check on {}, not yet: {said}", vm.name);
            std::thread::sleep(Duration::from_secs(3));
        }
        assert!(
            ran,
            "the template's snippet and the requester's cloud-config ran: {said}"
        );
        // Bob's key is refused: the VM is Ann's.
        let (code, _, err) = ssh(&bob_key, s.port, "debian", "true");
        assert_ne!(code, 0, "bob's key must be refused");
        assert!(err.contains("Permission denied"), "{err}");
        host_keys.push(host_key(s.port));
    }
    assert!(!host_keys[0].is_empty());
    assert_ne!(
        host_keys[0], host_keys[1],
        "each clone makes its own host keys"
    );

    // The agent's addresses reach the VM page.
    for u in &uuids {
        let vm = wait_until!(120, format!("{u}'s agent addresses"), {
            let vm = managed(&ann, *u).await;
            (!vm.guest_addresses.is_empty()).then_some(vm)
        });
        assert!(
            vm.guest_addresses.iter().any(|a| a.starts_with("10.0.2.")),
            "{:?}",
            vm.guest_addresses
        );
    }

    // Deleting a VM removes its seed with its disk, and gives its port back.
    let gone = &vms[0];
    ann.call(
        "vm_action",
        &[
            ("host_id", &host),
            ("uuid", &gone.uuid.to_string()),
            ("action", "delete"),
            ("confirm", &gone.name),
        ],
    )
    .await
    .expect("delete");
    let seed = concierge::catalog::cloud_init::seed_volume(gone.uuid);
    wait_until!(60, "the seed volume removed", {
        let s = seed.clone();
        let left = on_libvirt(move |c| storage::volumes(c, POOL).expect("volumes")).await;
        (!left.contains(&s)).then_some(())
    });
    wait_until!(30, "the VM marked deleted", {
        let deleted: bool =
            sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM vms WHERE uuid = $1")
                .bind(gone.uuid)
                .fetch_one(&app.db)
                .await
                .expect("vm row");
        deleted.then_some(())
    });
    let port: Option<i32> = sqlx::query_scalar(
        "SELECT ssh_port FROM vms WHERE host_id = $1::uuid AND ssh_port = $2 AND deleted_at IS NULL",
    )
    .bind(&host)
    .bind(i32::from(gone.ssh.as_ref().unwrap().port))
    .fetch_optional(&app.db)
    .await
    .expect("port query");
    assert!(port.is_none(), "the port is free again");
    drop(leftovers);
    let _ = std::fs::remove_dir_all(keys);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("concierge-keys-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("key folder");
    d
}

fn rand_u16() -> u16 {
    (Uuid::new_v4().as_u128() % 65_536) as u16
}

/// A base image is inspected through libvirt before a template may use it: a backing file, an
/// external data file, a raw image and a VMDK are refused at the field, and nothing is saved.
#[tokio::test]
async fn templates_refuse_images_that_would_reach_other_files() {
    if !crate::libvirtd::enabled("templates_refuse_images_that_would_reach_other_files") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    on_libvirt(ensure_pool).await;
    let host = register_local_host(&admin).await;
    wait_host(&admin, &host, "connected", 20).await;
    let dir = tempdir();
    let t = tag();
    let s = |n: &str| dir.join(n).to_string_lossy().to_string();
    let make = |args: &[&str]| {
        assert!(Command::new("qemu-img")
            .args(args)
            .status()
            .expect("qemu-img")
            .success());
    };
    make(&["create", "-q", "-f", "qcow2", &s("base.qcow2"), "64M"]);
    make(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &s("base.qcow2"),
        "-F",
        "qcow2",
        &s("over.qcow2"),
    ]);
    make(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s("data.raw")),
        &s("ext.qcow2"),
        "16M",
    ]);
    make(&["create", "-q", "-f", "raw", &s("plain.raw"), "16M"]);
    make(&["create", "-q", "-f", "vmdk", &s("disk.vmdk"), "16M"]);
    let cases = [
        ("over.qcow2", storage::Format::Qcow2, "backing file"),
        ("ext.qcow2", storage::Format::Qcow2, "external data file"),
        // A raw file named and created as qcow2 in the pool: read as what it is.
        ("plain.raw", storage::Format::Qcow2, "raw"),
        ("disk.vmdk", storage::Format::Raw, "VMDK"),
        ("base.qcow2", storage::Format::Qcow2, ""),
    ];
    for (file, format, _) in cases {
        let name = format!("cct{t}-{file}");
        leftovers.volumes.push(name.clone());
        let path = dir.join(file);
        on_libvirt(move |c| {
            let f = std::fs::File::open(&path).expect("image");
            let len = f.metadata().expect("size").len();
            storage::upload_volume(c, POOL, &name, format, f, len)
                .unwrap_or_else(|e| panic!("upload {name}: {}", e.message()));
        })
        .await;
    }
    let templates = "SELECT count(*) FROM templates";
    for (file, _, why) in cases {
        let volume = format!("cct{t}-{file}");
        let r = admin
            .call(
                "save_template",
                &[
                    ("name", &format!("Image {file}")),
                    ("os", "test"),
                    ("sizes", "tiny 1 0.25 1"),
                    ("default_lease_days", "1"),
                    ("max_lease_days", "1"),
                    ("tenants", "*"),
                    ("image_host", &host),
                    ("image_pool", POOL),
                    ("image_volume", &volume),
                ],
            )
            .await;
        if why.is_empty() {
            r.unwrap_or_else(|e| panic!("a plain qcow2 is accepted: {e:?}"));
        } else {
            let message = assert_field_error(&r, "image_volume");
            assert!(message.contains(why), "{file}: {message}");
        }
    }
    assert_eq!(
        app.scalar_i64(templates).await,
        1,
        "only the plain qcow2 made a template"
    );
    drop(leftovers);
    let _ = std::fs::remove_dir_all(dir);
}
