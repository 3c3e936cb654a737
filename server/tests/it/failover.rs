//! The fault proof of scale-out: three real `concierge` processes on one database provision
//! 100 VMs on twenty simulated hosts, and one replica is killed outright (SIGKILL) while its
//! jobs are running. Its hosts are owned again within 10 s, every request is fulfilled, every
//! VM has exactly one domain (on the host its row names), and the quota ledger equals the
//! recount.
//!
//! The hosts must outlive the replica that owned them, as real hypervisors do: each is an
//! unprivileged libvirtd of its own serving libvirt's test driver
//! (`test+unix:///default?socket=…`), so every replica's connection sees the same simulated
//! domains. Runs with the libvirtd tests (`CONCIERGE_LIBVIRTD_TESTS=1`): it needs the
//! libvirtd binary `scripts/libvirtd` installs, not the system daemon.

use crate::cluster::{leases_until, signal, three_replicas};
use crate::common::*;
use crate::libvirtd::enabled;
use app::provisioning::Recount;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;
use virt::connect::Connect;

/// One libvirtd per simulated host, each in a runtime directory of its own. A connection the
/// test holds to each keeps its simulated state alive whoever else connects and disconnects
/// (the test driver forgets its domains when its last connection closes).
struct Daemons {
    children: Vec<std::process::Child>,
    anchors: Vec<Connect>,
    uris: Vec<String>,
    dir: PathBuf,
}

/// The user and group the daemons run as: `nobody` when the tests run as root (a root
/// libvirtd is the system daemon, and there is one already), else the test's own user.
fn daemon_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody"))
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
}

impl Daemons {
    fn start(n: usize) -> Daemons {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("concierge-hosts-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let user = daemon_user();
        let mut children = Vec::new();
        let mut sockets = Vec::new();
        for i in 0..n {
            let home = dir.join(format!("h{i:02}"));
            std::fs::create_dir_all(&home).unwrap();
            let mut cmd = std::process::Command::new("libvirtd");
            cmd.env("HOME", &home)
                .env("XDG_RUNTIME_DIR", home.join("run"))
                .env("XDG_CONFIG_HOME", home.join("config"))
                .env("XDG_CACHE_HOME", home.join("cache"))
                .current_dir(&home)
                .stdin(std::process::Stdio::null())
                .stdout(std::fs::File::create(home.join("libvirtd.out")).unwrap())
                .stderr(std::fs::File::create(home.join("libvirtd.log")).unwrap());
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
                std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
                cmd.uid(uid).gid(gid);
            }
            children.push(
                cmd.spawn()
                    .expect("start libvirtd (scripts/libvirtd installs it)"),
            );
            sockets.push(home.join("run/libvirt/libvirt-sock"));
        }
        let uris: Vec<String> = sockets
            .iter()
            .map(|s| format!("test+unix:///default?socket={}", s.display()))
            .collect();
        let started = Instant::now();
        let mut anchors = Vec::new();
        for uri in &uris {
            let conn = loop {
                match Connect::open(Some(uri)) {
                    Ok(c) => break c,
                    Err(e) => {
                        assert!(
                            started.elapsed() < Duration::from_secs(30),
                            "libvirtd for {uri} does not answer: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            // The test driver's sample domain would take most of the host's 3 GiB; the base
            // image every VM is cloned from.
            if let Ok(d) = conn.lookup_domain_by_name("test") {
                let _ = d.destroy();
                d.undefine().unwrap();
            }
            let pool = conn.lookup_storage_pool_by_name("default-pool").unwrap();
            virt::storage_vol::StorageVol::create_xml(
                &pool,
                "<volume><name>base.qcow2</name><capacity unit='G'>1</capacity>\
                 <target><format type='qcow2'/></target></volume>",
                0,
            )
            .unwrap();
            anchors.push(conn);
        }
        Daemons {
            children,
            anchors,
            uris,
            dir,
        }
    }

    /// Every domain and volume the hosts hold: host index → (domain UUIDs, volume names).
    fn truth(&self) -> Vec<(Vec<Uuid>, Vec<String>)> {
        self.anchors
            .iter()
            .map(|c| {
                let domains = c
                    .list_all_domains(0)
                    .unwrap()
                    .iter()
                    .map(|d| d.uuid().unwrap())
                    .collect();
                let volumes = c
                    .lookup_storage_pool_by_name("default-pool")
                    .unwrap()
                    .list_volumes()
                    .unwrap();
                (domains, volumes)
            })
            .collect()
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in self.anchors.drain(..) {
            concierge::hypervisor::events::close(c);
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_replica_killed_while_100_vms_are_provisioned_loses_and_duplicates_nothing() {
    if !enabled(
        "failover::a_replica_killed_while_100_vms_are_provisioned_loses_and_duplicates_nothing",
    ) {
        return;
    }
    let daemons = tokio::task::spawn_blocking(|| Daemons::start(20))
        .await
        .unwrap();
    let url = fresh_database().await;
    let env = [
        ("CONCIERGE_RECONCILE_SECONDS", "2"),
        ("CONCIERGE_SAMPLE_SECONDS", "2"),
        ("CONCIERGE_SHUTDOWN_GRACE_SECONDS", "1"),
    ];
    let (mut procs, ids, db) = three_replicas(&url, &env).await;

    // Twenty hosts, each seen by its owner with its pool before anything is requested.
    let mut hosts = Vec::new();
    for (i, uri) in daemons.uris.iter().enumerate() {
        hosts.push(
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO hosts (name, uri, simulated) VALUES ($1, $2, true) RETURNING id",
            )
            .bind(format!("h{i:02}"))
            .bind(uri)
            .fetch_one(&db)
            .await
            .unwrap(),
        );
    }
    let started = Instant::now();
    loop {
        let ready: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hosts h WHERE h.state = 'connected'
               AND EXISTS (SELECT 1 FROM storage_pools p WHERE p.host_id = h.id AND p.name = 'default-pool' AND p.active)",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if ready == 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {ready} of 20 hosts connected with their pool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A tenant whose requests of up to ten small VMs are approved at once, a template whose
    // base image every host holds, and a requester.
    let accounts = Accounts::new(&db).await;
    let admin = procs[0].admin().await;
    let tenant = accounts.tenant("Acme").await;
    let t = tenant.to_string();
    admin
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("vcpus", "200"),
                ("memory_gib", "100"),
                ("disk_gib", "1000"),
                ("vms", "200"),
            ],
        )
        .await
        .unwrap();
    admin
        .call(
            "set_policy",
            &[
                ("tenant_id", &t),
                ("auto_max_vcpus", "16"),
                ("auto_max_memory_gib", "16"),
                ("auto_max_count", "10"),
                ("auto_max_lease_days", "30"),
                ("expire_days", "7"),
                ("levels", ""),
            ],
        )
        .await
        .unwrap();
    let template = admin
        .call_as::<Uuid>(
            "save_template",
            &[
                ("name", "Tiny"),
                ("description", "A small simulated machine"),
                ("os", "Debian GNU/Linux 12"),
                ("sizes", "tiny 1 0.25 1"),
                ("default_lease_days", "30"),
                ("max_lease_days", "90"),
                ("tenants", "acme"),
                ("image_host", &hosts[0].to_string()),
                ("image_pool", "default-pool"),
                ("image_volume", "base.qcow2"),
            ],
        )
        .await
        .unwrap();
    for h in &hosts[1..] {
        // The same image already in every host's pool (as an image copy would leave it).
        sqlx::query(
            "INSERT INTO image_copies (image_id, host_id, pool, volume)
             SELECT image_id, $2, 'default-pool', 'base.qcow2' FROM templates WHERE id = $1",
        )
        .bind(template)
        .bind(h)
        .execute(&db)
        .await
        .unwrap();
    }
    admin
        .call(
            "publish_template",
            &[("id", &template.to_string()), ("published", "true")],
        )
        .await
        .unwrap();
    accounts
        .user("ann@example.com", Some((tenant, "requester")))
        .await;
    let mut clients = Vec::new();
    for p in &procs {
        let c = p.client();
        c.login("ann@example.com", PASSWORD).await.unwrap();
        clients.push(c);
    }

    // 100 VMs in ten requests, spread over the three replicas.
    let tpl = template.to_string();
    let mut requests = Vec::new();
    for i in 0..10 {
        let prefix = format!("batch{i}");
        let id: Uuid = clients[i % 3]
            .call_as(
                "submit_request",
                &[
                    ("tenant_id", &t),
                    ("template_id", &tpl),
                    ("size", "tiny"),
                    ("count", "10"),
                    ("name_prefix", &prefix),
                    ("lease_days", ""),
                    ("purpose", "Failover proof"),
                ],
            )
            .await
            .unwrap();
        requests.push(id);
    }

    // Kill the replica running the most provisioning jobs once a few VMs run.
    let started = Instant::now();
    let (victim, in_flight) = loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM vms WHERE phase = 'running'")
            .fetch_one(&db)
            .await
            .unwrap();
        let busy: Vec<(Uuid, Vec<i64>)> = sqlx::query_as(
            "SELECT locked_by, array_agg(id) FROM jobs
              WHERE kind = 'provision' AND state = 'running' AND locked_by IS NOT NULL
              GROUP BY locked_by ORDER BY count(*) DESC",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        if running >= 5 {
            if let Some((replica, jobs)) = busy.into_iter().next() {
                let i = ids.iter().position(|r| *r == replica).unwrap();
                signal(&procs[i], "KILL");
                break (i, jobs);
            }
        }
        assert!(
            running < 100 && started.elapsed() < Duration::from_secs(60),
            "no moment with provisioning jobs in flight ({running} running)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed_at = Instant::now();
    let running_at_kill: i64 =
        sqlx::query_scalar("SELECT count(*) FROM vms WHERE phase = 'running'")
            .fetch_one(&db)
            .await
            .unwrap();
    eprintln!(
        "killed replica {} with {} provisioning jobs in flight, {running_at_kill} of 100 VMs running",
        victim + 1,
        in_flight.len()
    );
    let survivors: Vec<Uuid> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, r)| *r)
        .collect();
    let (_, took) = leases_until(
        &db,
        Duration::from_secs(10),
        "takeover after kill -9",
        |l| {
            hosts
                .iter()
                .all(|h| l.get(h).is_some_and(|(o, _)| survivors.contains(o)))
        },
    )
    .await;
    eprintln!("its hosts owned again after {took:?}");

    // Every request fulfilled, every VM running.
    loop {
        let (running, fulfilled): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM vms WHERE phase = 'running'),
                    (SELECT count(*) FROM requests WHERE id = ANY($1) AND state = 'fulfilled')",
        )
        .bind(&requests)
        .fetch_one(&db)
        .await
        .unwrap();
        if running == 100 && fulfilled == 10 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "after the kill: {running} of 100 VMs running, {fulfilled} of 10 requests fulfilled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("all 100 running {:?} after the kill", killed_at.elapsed());
    // The killed replica's jobs were finished by the others; none failed.
    let finished_by: Vec<(String, Option<Uuid>)> =
        sqlx::query_as("SELECT state, locked_by FROM jobs WHERE id = ANY($1)")
            .bind(&in_flight)
            .fetch_all(&db)
            .await
            .unwrap();
    for (state, by) in &finished_by {
        assert_eq!(state, "done");
        assert!(
            by.is_some_and(|b| survivors.contains(&b)),
            "a killed replica's job is finished by a survivor"
        );
    }
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'failed'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(failed, 0, "no job failed");

    // The hypervisors' truth: each VM exactly one domain, on its own host, and one disk.
    let placed: HashMap<Uuid, Uuid> =
        sqlx::query_as::<_, (Uuid, Uuid)>("SELECT uuid, host_id FROM vms")
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(placed.len(), 100);
    let truth = daemons.truth();
    let mut seen = HashSet::new();
    let mut per_host = vec![0; hosts.len()];
    for (i, (domains, volumes)) in truth.iter().enumerate() {
        for uuid in domains {
            assert!(seen.insert(*uuid), "domain {uuid} exists twice");
            assert_eq!(
                placed.get(uuid),
                Some(&hosts[i]),
                "domain {uuid} runs on the host its VM row names"
            );
            per_host[i] += 1;
        }
        assert_eq!(
            volumes.len(),
            domains.len() + 1,
            "host {i}: one disk per domain plus the base image: {volumes:?}"
        );
    }
    assert_eq!(seen.len(), 100, "every VM has its domain");
    eprintln!("domains per host: {per_host:?}");
    let rows: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT uuid) FROM domains WHERE missing_since IS NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(rows, (100, 100), "the inventory shows each domain once");

    // The quota ledger equals the recount, and counts 100 VMs.
    let admin = procs[if victim == 0 { 1 } else { 0 }].admin().await;
    let recount: Recount = admin
        .call_as("recount_quota", &[("tenant_id", &t)])
        .await
        .unwrap_or_else(|_| panic!("recount"));
    assert!(recount.consistent, "{recount:#?}");
    let used: i32 = sqlx::query_scalar("SELECT used_vms FROM tenant_quotas WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(used, 100);
    for p in procs.drain(..) {
        p.kill().await;
    }
    drop(daemons);
}
