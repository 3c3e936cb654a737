//! Against a real libvirtd and QEMU on `qemu:///system`, not the test driver: a domain's life
//! with a linked-clone qcow2 disk, host loss and reconnection when libvirtd dies, self-service
//! provisioning end to end, and the provisioning job surviving a server killed between its
//! steps.
//!
//! Opt-in: every test returns at once unless CONCIERGE_LIBVIRTD_TESTS=1 (`scripts/test` sets it
//! once `scripts/libvirtd` has libvirtd answering). The tests share one daemon and one of them
//! kills it, so they run one at a time. What they create is named with a random tag in the
//! `concierge-test` pool and removed at the end, also when a test fails.

use crate::common::*;
use app::fleet::{ChartView, HostDetail, HostSummary, VmDetail, VolumeInfo};
use app::provisioning::{Recount, RequestDetail};
use app::states::{RequestState, VmPhase};
use concierge::hypervisor::domain_xml;
use concierge::hypervisor::{connection, events, storage};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;
use virt::connect::Connect;

pub(crate) const URI: &str = "qemu:///system";
pub(crate) const POOL: &str = "concierge-test";
const POOL_DIR: &str = "/var/lib/libvirt/concierge-test";
/// Host loss must show within this (the target).
const LOST_WITHIN: Duration = Duration::from_secs(10);

/// One test at a time: they share the daemon, and one of them kills it.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn enabled(test: &str) -> bool {
    let on = std::env::var("CONCIERGE_LIBVIRTD_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("{test}: skipped: set CONCIERGE_LIBVIRTD_TESTS=1 (scripts/test does)");
    }
    on
}

/// A short random tag for names on the shared daemon.
pub(crate) fn tag() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_string()
}

pub(crate) fn measure(what: &str, d: Duration) {
    eprintln!("measure: {what}: {} ms", d.as_millis());
}

/// Polls `$check` (an expression yielding `Option<T>`, awaits allowed) every 50 ms until it is
/// `Some`, failing the test after `$secs` seconds.
macro_rules! wait_until {
    ($secs:expr, $what:expr, $check:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        loop {
            if let Some(v) = $check {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {} s waiting for {}",
                $secs,
                $what
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}
pub(crate) use wait_until;

// ---------------------------------------------------------------------------------------------
// libvirt, straight from the test (a second client of the daemon, like `virsh`)
// ---------------------------------------------------------------------------------------------

fn open() -> Result<Connect, String> {
    events::ensure_event_loop();
    Connect::open(Some(URI)).map_err(|e| e.message().to_string())
}

/// Runs `f` on a fresh connection to the daemon, off the executor.
pub(crate) async fn on_libvirt<T: Send + 'static>(
    f: impl FnOnce(&Connect) -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(move || {
        let conn = open().unwrap_or_else(|e| panic!("open {URI}: {e}"));
        let out = f(&conn);
        events::close(conn);
        out
    })
    .await
    .expect("libvirt work")
}

/// The dir pool the tests use: defined, built and started once, left in place afterwards.
pub(crate) fn ensure_pool(conn: &Connect) {
    match conn.lookup_storage_pool_by_name(POOL) {
        Ok(p) => {
            if !p.is_active().unwrap_or(false) {
                let _ = p.build(0);
                p.create(0)
                    .unwrap_or_else(|e| panic!("start pool {POOL}: {}", e.message()));
            }
        }
        Err(_) => {
            storage::create_dir_pool(conn, POOL, POOL_DIR)
                .unwrap_or_else(|e| panic!("create pool {POOL}: {}", e.message()));
        }
    }
}

/// What the daemon holds for one VM: the domains with its UUID or its name (name, active), and
/// how many volumes in the pool carry its volume name.
#[derive(Debug)]
struct OnHost {
    domains: Vec<(String, bool)>,
    volumes: usize,
}

fn on_host(conn: &Connect, uuid: Uuid, name: &str) -> OnHost {
    let domains = conn
        .list_all_domains(0)
        .expect("list domains")
        .into_iter()
        .filter_map(|d| {
            let n = d.name().ok()?;
            (d.uuid().ok() == Some(uuid) || n == name).then(|| (n, d.is_active().unwrap_or(false)))
        })
        .collect();
    let wanted = concierge::provisioning::provisioner::volume_name(uuid);
    let volumes = storage::volumes(conn, POOL)
        .expect("list volumes")
        .into_iter()
        .filter(|v| *v == wanted)
        .count();
    OnHost { domains, volumes }
}

fn volume_xml(conn: &Connect, name: &str) -> String {
    conn.lookup_storage_pool_by_name(POOL)
        .and_then(|p| p.lookup_storage_vol_by_name(name))
        .and_then(|v| v.xml_desc(0))
        .unwrap_or_else(|e| panic!("volume {name}: {}", e.message()))
}

fn volume_path(conn: &Connect, name: &str) -> String {
    conn.lookup_storage_pool_by_name(POOL)
        .and_then(|p| p.lookup_storage_vol_by_name(name))
        .and_then(|v| v.path())
        .unwrap_or_else(|e| panic!("volume {name}: {}", e.message()))
}

/// A domain as an admin would define it with virsh: KVM when the host offers it (else TCG), an
/// optional qcow2 disk, user-mode networking, QEMU's default CPU model.
pub(crate) fn plain_domain_xml(
    conn: &Connect,
    name: &str,
    uuid: Uuid,
    memory_mib: u64,
    disk: Option<&str>,
) -> String {
    let disk = disk
        .map(|path| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                 <source file='{path}'/><target dev='vda' bus='virtio'/></disk>"
            )
        })
        .unwrap_or_default();
    format!(
        "<domain type='{}'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>\
         <devices>{disk}<interface type='user'><model type='virtio'/></interface></devices></domain>",
        domain_xml::domain_type(conn)
    )
}

/// Domains and volumes a test made, removed when it ends however it ends (volumes in reverse
/// order: clones before their base).
#[derive(Default)]
pub(crate) struct Leftovers {
    pub(crate) domains: Vec<Uuid>,
    pub(crate) volumes: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if self.domains.is_empty() && self.volumes.is_empty() {
            return;
        }
        let Ok(conn) = open() else {
            eprintln!("could not clean up {:?}: libvirtd is down", self.domains);
            return;
        };
        for uuid in self.domains.drain(..) {
            if let Ok(dom) = conn.lookup_domain_by_uuid(uuid) {
                let _ = connection::undefine(&dom);
            }
        }
        for v in self.volumes.drain(..).rev() {
            let _ = storage::delete_volume(&conn, POOL, &v);
        }
        events::close(conn);
    }
}

// ---------------------------------------------------------------------------------------------
// libvirtd itself (for the host-loss test)
// ---------------------------------------------------------------------------------------------

/// Where the system libvirtd that `scripts/libvirtd` starts (`libvirtd -d` as root) writes its
/// process id.
const LIBVIRTD_PIDFILE: &str = "/run/libvirtd.pid";

/// The system libvirtd's process id, from its pidfile, when that process is alive (not a
/// zombie) and is a libvirtd. Other libvirtd processes on the machine (a user's session
/// daemon, another instance) are none of this test's business.
fn system_libvirtd() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(LIBVIRTD_PIDFILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ..."
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    (comm == "libvirtd" && state != Some('Z')).then_some(pid)
}

fn as_root(cmd: &str) -> std::process::ExitStatus {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let line = if root {
        cmd.to_string()
    } else {
        format!("sudo -n {cmd}")
    };
    std::process::Command::new("sh")
        .args(["-c", &line])
        .status()
        .expect("run sh")
}

/// Starts libvirtd unless it runs, then waits until it answers.
fn start_libvirtd() {
    if system_libvirtd().is_none() {
        assert!(as_root("libvirtd -d").success(), "libvirtd -d failed");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(conn) = open() {
            events::close(conn);
            return;
        }
        assert!(Instant::now() < deadline, "libvirtd does not answer again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Brings libvirtd back when the host-loss test ends, however it ends.
struct LibvirtdBack;

impl Drop for LibvirtdBack {
    fn drop(&mut self) {
        if system_libvirtd().is_some() {
            return;
        }
        eprintln!("restarting libvirtd after the host-loss test");
        let _ = as_root("libvirtd -d");
        // The next test (and the cleanup) need it answering; never panic in a drop.
        for _ in 0..150 {
            if let Ok(conn) = open() {
                events::close(conn);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The portal's side
// ---------------------------------------------------------------------------------------------

pub(crate) async fn register_local_host(admin: &Client) -> String {
    let h: HostSummary = admin
        .call_as(
            "register_host",
            &[("name", "local"), ("uri", URI), ("schedulable", "true")],
        )
        .await
        .expect("register qemu:///system");
    h.id.to_string()
}

async fn host_state(admin: &Client, host: &str) -> (String, Option<String>) {
    let h: HostDetail = admin
        .call_as("get_host", &[("host_id", host)])
        .await
        .expect("get_host");
    (h.host.state, h.host.state_reason)
}

pub(crate) async fn wait_host(admin: &Client, host: &str, state: &str, secs: u64) -> Duration {
    let started = Instant::now();
    wait_until!(secs, format!("host {state}"), {
        (host_state(admin, host).await.0 == state).then_some(())
    });
    started.elapsed()
}

/// (state, state_reason, missing) of a domain row.
pub(crate) async fn domain_row(
    db: &PgPool,
    host: &str,
    uuid: Uuid,
) -> Option<(String, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT state, state_reason, missing_since IS NOT NULL FROM domains WHERE host_id = $1::uuid AND uuid = $2",
    )
    .bind(host)
    .bind(uuid)
    .fetch_optional(db)
    .await
    .expect("domain row")
}

async fn create_volume(admin: &Client, host: &str, name: &str, kind: &str, source: &str) {
    admin
        .call(
            "create_volume",
            &[
                ("host_id", host),
                ("pool", POOL),
                ("name", name),
                ("kind", kind),
                ("capacity_gib", "1"),
                ("source", source),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create volume {name}: {e:?}"));
}

async fn list_volumes(admin: &Client, host: &str) -> Vec<String> {
    admin
        .call_as::<Vec<VolumeInfo>>("list_volumes", &[("host_id", host), ("pool", POOL)])
        .await
        .expect("list_volumes")
        .into_iter()
        .map(|v| v.name)
        .collect()
}

/// The host, a blank 1 GiB base image and a published template on it (size `tiny`: 1 vCPU,
/// 256 MiB, 1 GiB) offered to every tenant. Returns (host id, template id).
pub(crate) async fn catalog(
    admin: &Client,
    base: &str,
    leftovers: &mut Leftovers,
) -> (String, String) {
    on_libvirt(ensure_pool).await;
    let host = register_local_host(admin).await;
    wait_host(admin, &host, "connected", 20).await;
    leftovers.volumes.push(base.to_string());
    create_volume(admin, &host, base, "blank", "").await;
    // The pool's row (active, free space) is what placement reads.
    admin
        .call("reconcile_host", &[("host_id", &host)])
        .await
        .expect("reconcile");
    let template = admin
        .call_as::<Uuid>(
            "save_template",
            &[
                ("name", "Blank disk"),
                ("description", "A blank qcow2: QEMU runs, no OS boots"),
                ("os", "none"),
                ("sizes", "tiny 1 0.25 1"),
                ("default_lease_days", "30"),
                ("max_lease_days", "90"),
                ("tenants", "*"),
                ("image_host", &host),
                ("image_pool", POOL),
                ("image_volume", base),
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
    (host, template)
}

/// Auto-approves one small VM at a time for `tenant`.
pub(crate) async fn auto_approve(admin: &Client, tenant: Uuid) {
    admin
        .call(
            "set_policy",
            &[
                ("tenant_id", &tenant.to_string()),
                ("auto_max_vcpus", "2"),
                ("auto_max_memory_gib", "4"),
                ("auto_max_count", "1"),
                ("auto_max_lease_days", "30"),
                ("expire_days", "7"),
                ("levels", ""),
            ],
        )
        .await
        .expect("set_policy");
}

pub(crate) fn request_form<'a>(
    tenant: &'a str,
    template: &'a str,
    prefix: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("tenant_id", tenant),
        ("template_id", template),
        ("size", "tiny"),
        ("count", "1"),
        ("name_prefix", prefix),
        ("lease_days", ""),
        ("purpose", "Real libvirtd tests"),
    ]
}

pub(crate) async fn wait_request(
    c: &Client,
    id: &str,
    state: RequestState,
    secs: u64,
) -> RequestDetail {
    wait_until!(secs, format!("request {id} to be {state}"), {
        let r: RequestDetail = c
            .call_as("get_request", &[("id", id)])
            .await
            .expect("get_request");
        let now = r.request.state;
        assert!(
            now == state
                || !matches!(
                    now,
                    RequestState::Failed | RequestState::Rejected | RequestState::Cancelled
                ),
            "request ended {now}, not {state}: {r:#?}"
        );
        (now == state).then_some(r)
    })
}

/// The request's log, one line per event: "at kind: message" (the time as it crosses the
/// wire, RFC 3339).
pub(crate) fn timeline(r: &RequestDetail) -> String {
    r.events
        .iter()
        .map(|x| {
            format!(
                "  {} {}: {}\n",
                x.at.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                x.kind,
                x.message
            )
        })
        .collect()
}

fn event_kinds(r: &RequestDetail) -> Vec<String> {
    r.events.iter().map(|x| x.kind.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// (a) hypervisors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_real_domain_with_a_linked_clone_disk_lives_and_dies_through_the_portal() {
    if !enabled("a_real_domain_with_a_linked_clone_disk_lives_and_dies_through_the_portal") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let app = spawn_app_with(|c| {
        // Rows change by events only: no periodic reconcile during the test.
        c.reconcile_seconds = 3600;
        c.shutdown_timeout_seconds = 3;
        c.sample_seconds = 1;
    })
    .await;
    let admin = app.fleet_admin().await;
    on_libvirt(ensure_pool).await;
    let host = register_local_host(&admin).await;
    wait_host(&admin, &host, "connected", 20).await;
    let t = tag();
    let (base, disk, name) = (
        format!("cct{t}-base.qcow2"),
        format!("cct{t}.qcow2"),
        format!("cct{t}"),
    );
    leftovers.volumes.push(base.clone());
    create_volume(&admin, &host, &base, "blank", "").await;
    leftovers.volumes.push(disk.clone());
    create_volume(&admin, &host, &disk, "linked", &base).await;
    let vols = list_volumes(&admin, &host).await;
    assert!(vols.contains(&base) && vols.contains(&disk), "{vols:?}");

    // The clone is a qcow2 overlay whose backing store is the base.
    let (b, d) = (base.clone(), disk.clone());
    let (base_path, disk_path, disk_xml) =
        on_libvirt(move |c| (volume_path(c, &b), volume_path(c, &d), volume_xml(c, &d))).await;
    let doc = roxmltree::Document::parse(&disk_xml).expect("volume XML");
    let backing = doc
        .descendants()
        .find(|n| n.has_tag_name("backingStore"))
        .unwrap_or_else(|| panic!("a linked clone has a backing store: {disk_xml}"));
    let backing_path = backing
        .descendants()
        .find(|n| n.has_tag_name("path"))
        .and_then(|n| n.text());
    assert_eq!(backing_path, Some(base_path.as_str()), "{disk_xml}");
    let format_of = |node: roxmltree::Node| {
        node.children()
            .find(|n| n.has_tag_name("format"))
            .and_then(|n| n.attribute("type"))
            .map(str::to_owned)
    };
    let target = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("target"))
        .expect("target");
    assert_eq!(format_of(target).as_deref(), Some("qcow2"), "{disk_xml}");
    assert_eq!(format_of(backing).as_deref(), Some("qcow2"), "{disk_xml}");

    // Another client defines the domain, as an admin would with virsh.
    let uuid = Uuid::new_v4();
    leftovers.domains.push(uuid);
    let (n, p) = (name.clone(), disk_path.clone());
    let defined_at = on_libvirt(move |c| {
        let xml = plain_domain_xml(c, &n, uuid, 256, Some(&p));
        c.define_domain_xml(&xml)
            .unwrap_or_else(|e| panic!("define: {}", e.message()));
        Instant::now()
    })
    .await;
    let db = &app.db;
    wait_until!(10, "the defined domain's row", {
        domain_row(db, &host, uuid)
            .await
            .filter(|r| r.0 == "shutoff" && !r.2)
    });
    measure(
        "define -> row (defined event, refresh)",
        defined_at.elapsed(),
    );

    // It starts outside the portal: the row follows by the lifecycle event alone.
    let started_at = on_libvirt(move |c| {
        let dom = c.lookup_domain_by_uuid(uuid).expect("domain");
        let t0 = Instant::now();
        dom.create()
            .unwrap_or_else(|e| panic!("start: {}", e.message()));
        measure("virDomainCreate (QEMU start)", t0.elapsed());
        Instant::now()
    })
    .await;
    let row = wait_until!(10, "running by event", {
        domain_row(db, &host, uuid)
            .await
            .filter(|r| r.0 == "running")
    });
    measure("start returned -> row running", started_at.elapsed());
    // Only the event writer sets a reason (QEMU sends Resumed and Started on a start).
    assert!(
        matches!(row.1.as_deref(), Some("started" | "resumed")),
        "written by an event: {row:?}"
    );
    // The writer records its latency just after its commit: the row can be seen first.
    let latencies = wait_until!(5, "the event writer's latency of the start", {
        let l = app
            .state
            .hypervisors
            .event_latencies
            .lock()
            .unwrap()
            .clone();
        (!l.is_empty()).then_some(l)
    });
    for l in &latencies {
        measure("event -> row (event writer)", *l);
    }
    let detail: VmDetail = admin
        .call_as("get_vm", &[("host_id", &host), ("uuid", &uuid.to_string())])
        .await
        .expect("get_vm");
    assert_eq!(detail.domain.state, "running", "{detail:?}");
    assert!(!detail.domain.managed, "made outside the portal");
    // The volume's name is in a disk's source path (its only field that names files).
    assert!(
        detail
            .disks
            .iter()
            .any(|d| d.source.as_deref().is_some_and(|s| s.contains(&disk))),
        "the disk is inventoried: {detail:?}"
    );
    // The sampler reads the running QEMU's counters: after two rounds a CPU rate and its
    // resident memory are stored, and the VM's CPU chart has data.
    let cpu: (Option<f32>, Option<i64>) = wait_until!(10, "a CPU rate for the running domain", {
        sqlx::query_as::<_, (Option<f32>, Option<i64>)>(
            "SELECT cpu_pct, mem_bytes FROM metric_samples WHERE subject = $1 AND cpu_pct IS NOT NULL LIMIT 1",
        )
        .bind(uuid)
        .fetch_optional(db)
        .await
        .unwrap()
    });
    assert!(cpu.0.unwrap() >= 0.0 && cpu.0.unwrap() <= 100.0, "{cpu:?}");
    assert!(
        cpu.1.unwrap_or(0) > 1 << 20,
        "QEMU's RSS is stored: {cpu:?}"
    );
    let charts: Vec<ChartView> = admin
        .call_as(
            "vm_charts",
            &[
                ("host_id", &host),
                ("uuid", &uuid.to_string()),
                ("range", "6h"),
            ],
        )
        .await
        .expect("vm_charts");
    assert!(
        !charts[0].summary.contains("no data"),
        "{}",
        charts[0].summary
    );

    // A graceful shutdown the guest (no OS) ignores: forced off after the timeout.
    let t0 = Instant::now();
    let u = uuid.to_string();
    admin
        .call(
            "vm_action",
            &[("host_id", &host), ("uuid", &u), ("action", "shutdown")],
        )
        .await
        .expect("shutdown");
    // The guest was only asked: the operation waits (the page says "shutting down…"), and a
    // second request is refused rather than stacked.
    let op = || async {
        sqlx::query_as::<_, (String, Option<String>, Option<i32>)>(
            "SELECT status, detail, duration_ms FROM domain_operations
             WHERE domain_uuid = $1 AND operation = 'shutdown' ORDER BY id DESC LIMIT 1",
        )
        .bind(uuid)
        .fetch_one(db)
        .await
        .unwrap()
    };
    let (status, detail, _) = op().await;
    assert_eq!(status, "running");
    assert!(detail.unwrap_or_default().contains("forced off after 3 s"));
    let again = admin
        .call(
            "vm_action",
            &[("host_id", &host), ("uuid", &u), ("action", "shutdown")],
        )
        .await;
    assert!(
        format!("{again:?}").contains("already shutting down"),
        "{again:?}"
    );
    wait_until!(20, "shut off", {
        domain_row(db, &host, uuid)
            .await
            .filter(|r| r.0 == "shutoff")
    });
    measure(
        "shutdown (ACPI ignored, forced off after 3 s) -> row shutoff",
        t0.elapsed(),
    );
    // The outcome is recorded: forced off at the deadline, not "succeeded in 9 ms".
    wait_until!(10, "the shutdown's outcome recorded", {
        let (status, detail, ms) = op().await;
        (status == "succeeded").then_some((detail, ms))
    });
    let (_, detail, ms) = op().await;
    assert!(
        detail.as_deref().unwrap_or_default().contains("forced off"),
        "{detail:?}"
    );
    assert!(ms.unwrap_or_default() >= 3000, "{ms:?}");
    assert!(
        !on_libvirt(move |c| c
            .lookup_domain_by_uuid(uuid)
            .and_then(|d| d.is_active())
            .expect("domain"))
        .await
    );

    // Started through the portal: the row is updated before the call returns.
    let t0 = Instant::now();
    admin
        .call(
            "vm_action",
            &[("host_id", &host), ("uuid", &u), ("action", "start")],
        )
        .await
        .expect("start");
    measure("vm_action start", t0.elapsed());
    assert_eq!(domain_row(db, &host, uuid).await.unwrap().0, "running");

    // Deleting needs the name; then the domain is gone and its row marked missing.
    let wrong = admin
        .call(
            "vm_action",
            &[
                ("host_id", &host),
                ("uuid", &u),
                ("action", "delete"),
                ("confirm", "something-else"),
            ],
        )
        .await;
    assert_field_error(&wrong, "confirm");
    let t0 = Instant::now();
    admin
        .call(
            "vm_action",
            &[
                ("host_id", &host),
                ("uuid", &u),
                ("action", "delete"),
                ("confirm", &name),
            ],
        )
        .await
        .expect("delete");
    measure("vm_action delete (destroy + undefine)", t0.elapsed());
    let (n, t) = (name.clone(), uuid);
    let left = on_libvirt(move |c| on_host(c, t, &n)).await;
    assert!(left.domains.is_empty(), "{left:?}");
    wait_until!(10, "the row marked missing", {
        domain_row(db, &host, uuid).await.filter(|r| r.2)
    });
    let ops: Vec<(String, String)> = sqlx::query_as(
        "SELECT operation, status FROM domain_operations WHERE domain_uuid = $1 ORDER BY id",
    )
    .bind(uuid)
    .fetch_all(db)
    .await
    .unwrap();
    let ops: Vec<(&str, &str)> = ops.iter().map(|(o, s)| (o.as_str(), s.as_str())).collect();
    assert_eq!(
        ops,
        [
            ("shutdown", "succeeded"),
            ("start", "succeeded"),
            ("delete", "succeeded")
        ]
    );

    // The disk goes through the portal too.
    for v in [&disk, &base] {
        admin
            .call(
                "delete_volume",
                &[
                    ("host_id", &host),
                    ("pool", POOL),
                    ("name", v),
                    ("confirm", v),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("delete volume {v}: {e:?}"));
    }
    let vols = list_volumes(&admin, &host).await;
    assert!(!vols.contains(&disk) && !vols.contains(&base), "{vols:?}");
    app.state.hypervisors.stop_all();
}

#[tokio::test]
async fn the_host_is_lost_when_libvirtd_dies_and_reconciled_when_it_returns() {
    if !enabled("the_host_is_lost_when_libvirtd_dies_and_reconciled_when_it_returns") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let app = spawn_app_with(|c| c.reconcile_seconds = 3600).await;
    let admin = app.fleet_admin().await;
    let host = register_local_host(&admin).await;
    wait_host(&admin, &host, "connected", 20).await;

    // A running (diskless) domain while the daemon dies.
    let uuid = Uuid::new_v4();
    let name = format!("cct{}", tag());
    leftovers.domains.push(uuid);
    let n = name.clone();
    on_libvirt(move |c| {
        let xml = plain_domain_xml(c, &n, uuid, 128, None);
        let dom = c
            .define_domain_xml(&xml)
            .unwrap_or_else(|e| panic!("define: {}", e.message()));
        dom.create()
            .unwrap_or_else(|e| panic!("start: {}", e.message()));
    })
    .await;
    let db = &app.db;
    wait_until!(10, "the running domain's row", {
        domain_row(db, &host, uuid)
            .await
            .filter(|r| r.0 == "running")
    });

    let _back = LibvirtdBack;
    let pid =
        system_libvirtd().expect("the system libvirtd runs (its pidfile names a live libvirtd)");
    let killed_at = Instant::now();
    assert!(as_root(&format!("kill -KILL {pid}")).success());
    let lost_after = wait_host(&admin, &host, "lost", LOST_WITHIN.as_secs()).await;
    measure("libvirtd killed -> host lost", killed_at.elapsed());
    assert!(lost_after < LOST_WITHIN);
    let (_, reason) = host_state(&admin, &host).await;
    assert!(
        reason.as_deref().is_some_and(|r| !r.is_empty()),
        "a lost host says why"
    );
    // Operations are refused while the host is gone, with libvirt's reason.
    let r = admin
        .call(
            "vm_action",
            &[
                ("host_id", &host),
                ("uuid", &uuid.to_string()),
                ("action", "suspend"),
            ],
        )
        .await;
    assert!(matches!(r, Err((409, _))), "{r:?}");
    // While nobody watches, the row goes stale; the reconcile after reconnecting must fix it.
    let synced_before: time::OffsetDateTime =
        sqlx::query_scalar("SELECT last_sync_at FROM hosts WHERE id = $1::uuid")
            .bind(&host)
            .fetch_one(db)
            .await
            .unwrap();
    sqlx::query("UPDATE domains SET state = 'shutoff' WHERE uuid = $1")
        .bind(uuid)
        .execute(db)
        .await
        .unwrap();

    let restarted_at = Instant::now();
    tokio::task::spawn_blocking(start_libvirtd).await.unwrap();
    measure("libvirtd -d -> answering", restarted_at.elapsed());
    let back_after = wait_host(&admin, &host, "connected", 40).await;
    measure("libvirtd answering -> host connected", back_after);
    wait_until!(10, "the reconcile to correct the stale row", {
        domain_row(db, &host, uuid)
            .await
            .filter(|r| r.0 == "running")
    });
    measure(
        "libvirtd restarted -> host reconciled",
        restarted_at.elapsed(),
    );
    let synced_after: time::OffsetDateTime =
        sqlx::query_scalar("SELECT last_sync_at FROM hosts WHERE id = $1::uuid")
            .bind(&host)
            .fetch_one(db)
            .await
            .unwrap();
    assert!(synced_after > synced_before, "a fresh reconcile");
    // QEMU outlived the daemon; the new daemon took the domain back.
    let n = name.clone();
    let after = on_libvirt(move |c| on_host(c, uuid, &n)).await;
    assert_eq!(after.domains, [(name.clone(), true)]);
    // And the portal drives it again.
    admin
        .call(
            "vm_action",
            &[
                ("host_id", &host),
                ("uuid", &uuid.to_string()),
                ("action", "delete"),
                ("confirm", &name),
            ],
        )
        .await
        .expect("delete after reconnect");
    app.state.hypervisors.stop_all();
}

// ---------------------------------------------------------------------------------------------
// (b) provisioning
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_is_auto_approved_and_provisioned_on_real_qemu() {
    if !enabled("a_request_is_auto_approved_and_provisioned_on_real_qemu") {
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

    let prefix = format!("cct{t}");
    let ts = tenant.to_string();
    let submitted_at = Instant::now();
    let id = ann
        .call_as::<Uuid>("submit_request", &request_form(&ts, &template, &prefix))
        .await
        .expect("submit")
        .to_string();
    // Clean up even if provisioning fails half way.
    let uuid: Uuid = sqlx::query_scalar("SELECT uuid FROM vms WHERE request_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .expect("the VM row is made with the approval");
    leftovers.domains.push(uuid);
    leftovers
        .volumes
        .push(concierge::provisioning::provisioner::volume_name(uuid));
    let r = wait_request(&ann, &id, RequestState::Fulfilled, 60).await;
    measure("submit -> fulfilled (one VM)", submitted_at.elapsed());
    eprint!("{}", timeline(&r));
    let vms = &r.vms;
    assert_eq!(vms.len(), 1, "{r:#?}");
    // One VM is named by the prefix alone.
    let name = prefix.clone();
    assert_eq!(vms[0].uuid, uuid);
    assert_eq!(vms[0].name, name);
    assert_eq!(vms[0].phase, VmPhase::Running, "{r:#?}");
    assert_eq!(vms[0].state.as_deref(), Some("running"), "{r:#?}");
    let kinds = event_kinds(&r);
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
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }

    // On the host: one running domain named after the VM, on a linked clone of the base.
    let vol = concierge::provisioning::provisioner::volume_name(uuid);
    let (n, v, b) = (name.clone(), vol.clone(), base.clone());
    let (seen, dom_xml, vol_xml, base_path, vol_path) = on_libvirt(move |c| {
        let dom_xml = c
            .lookup_domain_by_uuid(uuid)
            .and_then(|d| d.xml_desc(0))
            .expect("domain XML");
        (
            on_host(c, uuid, &n),
            dom_xml,
            volume_xml(c, &v),
            volume_path(c, &b),
            volume_path(c, &v),
        )
    })
    .await;
    assert_eq!(
        seen.domains,
        [(domain_xml::libvirt_name(&name, uuid), true)],
        "{seen:?}"
    );
    assert_eq!(seen.volumes, 1);
    assert!(
        dom_xml.contains(&format!("<source file='{vol_path}'")),
        "the domain runs on its clone: {dom_xml}"
    );
    assert!(dom_xml.contains("type='qcow2'"), "{dom_xml}");
    assert!(
        vol_xml.contains("<backingStore>") && vol_xml.contains(&base_path),
        "a linked clone of the base: {vol_xml}"
    );
    assert!(
        vol_xml.contains("<capacity unit='bytes'>1073741824</capacity>"),
        "the size's disk: {vol_xml}"
    );
    assert!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM domains WHERE uuid = '{uuid}' AND managed AND missing_since IS NULL"
        ))
        .await
            == 1
    );
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM quota_ledger WHERE vm_uuid = '{uuid}' AND state = 'allocated'"
        ))
        .await,
        1
    );

    // It runs with the normal CPU weight (the start's larger one is over), in the live
    // domain and its definition; a stop and a start through the portal end the same way.
    let weights = move || {
        on_libvirt(move |c| {
            let d = c.lookup_domain_by_uuid(uuid).expect("domain");
            let read = |flags| {
                d.scheduler_parameters_flags(flags)
                    .map(|s| s.cpu_shares)
                    .unwrap_or_else(|e| panic!("weights: {}", e.message()))
            };
            (
                read(virt_sys::VIR_DOMAIN_AFFECT_LIVE),
                read(virt_sys::VIR_DOMAIN_AFFECT_CONFIG),
            )
        })
    };
    let normal = Some(concierge::hypervisor::cpu_weight::RUNNING);
    assert_eq!(weights().await, (normal, normal));
    for action in ["force_off", "start"] {
        ann.call(
            "vm_action",
            &[
                ("host_id", &host),
                ("uuid", &uuid.to_string()),
                ("action", action),
                ("confirm", ""),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{action}: {e:?}"));
    }
    assert_eq!(weights().await, (normal, normal), "after a restart");

    // The owner deletes it: domain, disk and quota go.
    let t0 = Instant::now();
    ann.call(
        "vm_action",
        &[
            ("host_id", &host),
            ("uuid", &uuid.to_string()),
            ("action", "delete"),
            ("confirm", &name),
        ],
    )
    .await
    .expect("delete");
    wait_until!(30, "the VM to be deleted", {
        (app.scalar_i64(&format!(
            "SELECT count(*) FROM vms WHERE uuid = '{uuid}' AND deleted_at IS NOT NULL"
        ))
        .await
            == 1)
            .then_some(())
    });
    measure("delete -> VM deleted (domain, disk, quota)", t0.elapsed());
    let n = name.clone();
    let gone = on_libvirt(move |c| on_host(c, uuid, &n)).await;
    assert!(gone.domains.is_empty() && gone.volumes == 0, "{gone:?}");
    assert_eq!(
        app.scalar_i64(&format!(
            "SELECT count(*) FROM quota_ledger WHERE vm_uuid = '{uuid}' AND state = 'released'"
        ))
        .await,
        1
    );
    let rc: Recount = admin
        .call_as("recount_quota", &[("tenant_id", &ts)])
        .await
        .expect("recount");
    assert!(rc.consistent, "{rc:?}");
    // The template's base image is in use: refused, with who uses it (the Leftovers guard
    // removes it after the test).
    let refused = admin
        .call(
            "delete_volume",
            &[
                ("host_id", &host),
                ("pool", POOL),
                ("name", &base),
                ("confirm", &base),
            ],
        )
        .await;
    assert!(
        format!("{refused:?}").contains("base image of template"),
        "{refused:?}"
    );
    app.state.hypervisors.stop_all();
}

// ---------------------------------------------------------------------------------------------
// (b) crash recovery: the real server binary, killed between provisioning steps
// ---------------------------------------------------------------------------------------------

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    format!("{base}/{db}{query}")
}

fn maintenance_url() -> String {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (scripts/test sets it)");
    with_database(&url, "postgres")
}

/// Like `Client::call`, but a connection cut by the dying server is an error, not a panic.
async fn call_tolerating_crash(
    c: &Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> Result<Value, String> {
    let res = c
        .http
        .post(format!("{}/api/{endpoint}", c.base))
        .header("Origin", ORIGIN)
        .header("Sec-Fetch-Site", "same-origin")
        .form(form)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    let body = res.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        serde_json::from_str(&body).map_err(|e| e.to_string())
    } else {
        Err(format!("{status}: {body}"))
    }
}

const KILL_POINTS: [&str; 4] = ["placed", "cloned", "defined", "started"];

#[tokio::test]
async fn a_server_killed_between_provisioning_steps_ends_with_one_domain_and_one_volume() {
    if !enabled("a_server_killed_between_provisioning_steps_ends_with_one_domain_and_one_volume") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut leftovers = Leftovers::default();
    let test_started = Instant::now();
    let db_name = format!("concierge_test_{}", Uuid::new_v4().simple());
    let maintenance = PgPoolOptions::new()
        .max_connections(1)
        .connect(&maintenance_url())
        .await
        .expect("maintenance database");
    sqlx::query(&format!("CREATE DATABASE {db_name}"))
        .execute(&maintenance)
        .await
        .expect("create the database");
    let url = with_database(&std::env::var("DATABASE_URL").unwrap(), &db_name);

    // A normal run sets up the catalog through the API (it migrates and creates the admin).
    let first = Process::start(&url, "server", &[]).await;
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("owner pool");
    sqlx::query("UPDATE users SET must_change_password = false WHERE lower(email) = 'admin@concierge.local'")
        .execute(&db)
        .await
        .unwrap();
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ('Acme') RETURNING id")
            .fetch_one(&db)
            .await
            .unwrap();
    // The admin requests too (as a member), so one sign-in does everything.
    sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role)
         SELECT $1, id, 'requester'::tenant_role FROM users WHERE lower(email) = 'admin@concierge.local'",
    )
    .bind(tenant)
    .execute(&db)
    .await
    .unwrap();
    let admin = first.admin().await;
    let t = tag();
    let base = format!("cct{t}-base.qcow2");
    let (host, template) = catalog(&admin, &base, &mut leftovers).await;
    auto_approve(&admin, tenant).await;
    first.kill().await;

    let ts = tenant.to_string();
    for point in KILL_POINTS {
        let round = Instant::now();
        let prefix = format!("cct{t}-{point}");
        let name = prefix.clone();

        // 1. A server that dies right after `point`.
        let mut doomed = Process::start(
            &url,
            &format!("server (crash after: {point})"),
            &[("CONCIERGE_CRASH_AFTER", point)],
        )
        .await;
        let c = doomed.admin().await;
        // The job may kill the process before the answer is written: read the ids from the
        // database instead.
        let answer =
            call_tolerating_crash(&c, "submit_request", &request_form(&ts, &template, &prefix))
                .await;
        let (request, uuid): (Uuid, Uuid) = sqlx::query_as(
            "SELECT r.id, v.uuid FROM requests r JOIN vms v ON v.request_id = r.id WHERE r.name_prefix = $1",
        )
        .bind(&prefix)
        .fetch_one(&db)
        .await
        .unwrap_or_else(|e| panic!("{point}: the request was not recorded ({answer:?}): {e}"));
        leftovers.domains.push(uuid);
        leftovers
            .volumes
            .push(concierge::provisioning::provisioner::volume_name(uuid));
        let status = tokio::time::timeout(Duration::from_secs(30), doomed.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{point}: the server never reached its crash point"))
            .expect("wait");
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "{point}: aborted, got {status:?}");
        }
        assert!(
            doomed.log().contains("crash point reached"),
            "{point}: {}",
            doomed.log()
        );
        drop(doomed);

        // What the dead server left: exactly the steps up to `point`, nothing committed after.
        let n = name.clone();
        let left = on_libvirt(move |c| on_host(c, uuid, &n)).await;
        let (phase, placed): (String, bool) =
            sqlx::query_as("SELECT phase, host_id IS NOT NULL FROM vms WHERE uuid = $1")
                .bind(uuid)
                .fetch_one(&db)
                .await
                .unwrap();
        assert!(placed, "{point}: placement was committed");
        assert_ne!(phase, "running", "{point}: not finished");
        let expected: (usize, Vec<(String, bool)>) = match point {
            "placed" => (0, vec![]),
            "cloned" => (1, vec![]),
            "defined" => (1, vec![(domain_xml::libvirt_name(&name, uuid), false)]),
            _ => (1, vec![(domain_xml::libvirt_name(&name, uuid), true)]),
        };
        assert_eq!(
            (left.volumes, left.domains.clone()),
            expected,
            "{point}: on the host after the crash"
        );
        assert_eq!(
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM quota_ledger WHERE vm_uuid = $1 AND state = 'allocated'"
            )
            .bind(uuid)
            .fetch_one(&db)
            .await
            .unwrap(),
            0,
            "{point}: nothing allocated before the commit"
        );

        // 2. A normal server takes the job over once its lease lapses and finishes it.
        let restarted = Instant::now();
        let healthy = Process::start(&url, "server", &[]).await;
        let c = healthy.admin().await;
        let r = wait_request(&c, &request.to_string(), RequestState::Fulfilled, 45).await;
        measure(
            &format!("{point}: restart -> fulfilled (lease 3 s)"),
            restarted.elapsed(),
        );
        eprint!("{}", timeline(&r));
        assert_eq!(r.vms[0].phase, VmPhase::Running, "{point}: {r:#?}");
        // Let the job record itself done, so the next server does not take it over again.
        wait_until!(15, format!("{point}: the job to be done"), {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            (open == 0).then_some(())
        });
        let n = name.clone();
        let after = on_libvirt(move |c| on_host(c, uuid, &n)).await;
        assert_eq!(
            after.domains,
            [(domain_xml::libvirt_name(&name, uuid), true)],
            "{point}: exactly one running domain"
        );
        assert_eq!(after.volumes, 1, "{point}: exactly one volume");
        let one = |sql: &'static str| {
            let db = db.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(uuid)
                    .fetch_one(&db)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            one("SELECT count(*) FROM vms WHERE request_id = (SELECT request_id FROM vms WHERE uuid = $1)").await,
            1,
            "{point}: one VM row"
        );
        assert_eq!(
            one("SELECT count(*) FROM quota_ledger WHERE vm_uuid = $1 AND state = 'allocated'")
                .await,
            1,
            "{point}: one allocated ledger row"
        );
        assert_eq!(
            one("SELECT count(*) FROM quota_ledger WHERE vm_uuid = $1 AND state <> 'released'")
                .await,
            1,
            "{point}: nothing else held"
        );
        assert_eq!(
            one("SELECT count(*) FROM domains WHERE uuid = $1 AND managed AND missing_since IS NULL")
                .await,
            1,
            "{point}: one managed domain row"
        );
        assert!(
            one("SELECT coalesce(max(attempts), 0)::int8 FROM jobs WHERE kind = 'provision' AND key = $1 AND state = 'done'")
                .await
                >= 2,
            "{point}: done by a second attempt"
        );
        assert_eq!(
            one("SELECT count(*) FROM audit_log WHERE action = 'vm.provision' AND object_id = $1::text")
                .await,
            1,
            "{point}: provisioned once"
        );
        healthy.kill().await;
        measure(&format!("{point}: whole round"), round.elapsed());
    }

    // The portal's bookkeeping agrees with itself after four crashes.
    let last = Process::start(&url, "server", &[]).await;
    let admin = last.admin().await;
    let rc: Recount = admin
        .call_as("recount_quota", &[("tenant_id", &ts)])
        .await
        .expect("recount");
    assert!(rc.consistent, "{rc:?}");
    last.kill().await;
    db.close().await;
    drop(leftovers);
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&maintenance)
        .await;
    measure("crash test, all four kill points", test_started.elapsed());
    let _ = host;
}
