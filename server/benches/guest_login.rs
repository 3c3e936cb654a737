//! Approval → SSH login possible, with the real Debian 12 image (`scripts/guest-image`) on a
//! real libvirtd + QEMU: rounds of 1 and of 5 VMs approved at once. For each VM the benchmark
//! polls `ssh -i KEY -p PORT debian@127.0.0.1 true` every 250 ms from the approval on, then asks
//! the guest's `systemd-analyze` for its own boot time (kernel + userspace), so the portal's
//! share (approval → QEMU started, from the request log) and the guest's share are apart.
//!
//!   scripts/libvirtd && scripts/guest-image   # once
//!   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     CONCIERGE_GUEST_IMAGE_DIR=.data/guest-image cargo bench -p server --bench guest_login
//!
//! CONCIERGE_BENCH_DOMAIN_TYPE: kvm or qemu (default qemu: these machines cannot run a guest
//! kernel under KVM). GUEST_BENCH_ROUNDS: the VM counts, default "1,5".
use concierge::config::Config;
use concierge::hypervisor::storage;
use concierge::platform::clock::SystemClock;
use concierge::Server;
use sqlx::postgres::PgPoolOptions;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod portal;
use portal::{cleanup, pct, Client};

const POOL: &str = "concierge-bench";
const POOL_DIR: &str = "/var/lib/libvirt/concierge-bench";

fn ssh(key: &std::path::Path, port: u16, command: &str) -> Option<String> {
    let out = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=2",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(key)
        .arg("-p")
        .arg(port.to_string())
        .arg("debian@127.0.0.1")
        .arg(command)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// "Startup finished in 2.3s (kernel) + 51.2s (userspace) = 53.5s" → (kernel, userspace).
fn boot_shares(line: &str) -> Option<(f64, f64)> {
    let secs = |part: &str| -> Option<f64> {
        let t = part.trim();
        let (min, rest) = match t.split_once("min ") {
            Some((m, r)) => (m.trim().parse::<f64>().ok()?, r),
            None => (0.0, t),
        };
        let v = if let Some(ms) = rest.strip_suffix("ms") {
            ms.trim().parse::<f64>().ok()? / 1000.0
        } else {
            rest.strip_suffix('s')?.trim().parse::<f64>().ok()?
        };
        Some(min * 60.0 + v)
    };
    let rest = line.split("Startup finished in ").nth(1)?;
    let kernel = rest.split(" (kernel)").next()?;
    let user = rest.split(" + ").nth(1)?.split(" (userspace)").next()?;
    Some((secs(kernel)?, secs(user)?))
}

/// Reads until the console has been quiet for 0.7 s.
async fn quiet<S: futures::Stream + Unpin>(ws: &mut S) {
    use futures::StreamExt;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(700), ws.next()).await {}
}

/// Console keystroke echo through the proxy: one character at a time at the login prompt,
/// timed from send to its echo, 200 times.
async fn echo(
    client: &Client,
    jar: &reqwest::cookie::Jar,
    host: &str,
    uuid: Uuid,
) -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    use reqwest::cookie::CookieStore;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let ticket = client
        .call(
            "open_console",
            &[
                ("host_id", host),
                ("uuid", &uuid.to_string()),
                ("kind", "serial"),
            ],
        )
        .await?;
    let base = client.base.replace("http://", "ws://");
    let mut req =
        format!("{base}{}", ticket["url"].as_str().unwrap_or_default()).into_client_request()?;
    let cookies = jar
        .cookies(&client.base.parse()?)
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?;
    req.headers_mut().insert("Cookie", cookies);
    req.headers_mut()
        .insert("Origin", "http://127.0.0.1:3000".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    // A fresh prompt, then wait for it to be quiet.
    ws.send(Message::Binary(b"\r".to_vec().into())).await?;
    quiet(&mut ws).await;
    let mut times = Vec::new();
    for i in 0..200 {
        let c = b'a' + (i % 26) as u8;
        let t0 = Instant::now();
        ws.send(Message::Binary(vec![c].into())).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) if b.contains(&c) => break,
                Ok(Some(Ok(_))) => continue,
                _ => anyhow::bail!("no echo for keystroke {i}"),
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        if i % 50 == 49 {
            // Ctrl-U clears the typed line before it grows long.
            ws.send(Message::Binary(vec![0x15].into())).await?;
            quiet(&mut ws).await;
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "console keystroke echo through the proxy (200, one at a time): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&times, 0.5),
        pct(&times, 0.99),
        pct(&times, 1.0)
    );
    let _ = ws.close(None).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let images = PathBuf::from(
        std::env::var("CONCIERGE_GUEST_IMAGE_DIR").unwrap_or_else(|_| ".data/guest-image".into()),
    );
    let images = if images.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(images)
    } else {
        images
    };
    let domain_type =
        std::env::var("CONCIERGE_BENCH_DOMAIN_TYPE").unwrap_or_else(|_| "qemu".into());
    let rounds: Vec<usize> = std::env::var("GUEST_BENCH_ROUNDS")
        .unwrap_or_else(|_| "1,5".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin_url.clone());
    let name = format!("concierge_bench_{}", Uuid::new_v4().simple());
    let maint = PgPoolOptions::new()
        .max_connections(1)
        .connect(&format!("{base}/postgres"))
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&maint)
        .await?;
    let url = format!("{base}/{name}");
    let mut config = Config::for_tests(&url);
    config.admin_password = Some("bench-admin-password".into());
    config.job_workers = 8;
    config.vcpu_overcommit = 16.0;
    config.ssh_port_min = 24000;
    config.ssh_port_max = 24099;
    let server = Server::build(config, Arc::new(SystemClock)).await?;
    let state = server.state.clone();
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = Client {
        http: reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .build()?,
        base: format!("http://{}", server.addr),
    };
    tokio::spawn(server.run());
    let owner = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    sqlx::query("UPDATE users SET must_change_password = false")
        .execute(&owner)
        .await?;
    let login = [
        ("email", "admin@concierge.local"),
        ("password", "bench-admin-password"),
    ];
    client.call("login", &login).await?;
    let host = client
        .call(
            "register_host",
            &[
                ("name", "bench"),
                ("uri", "qemu:///system"),
                ("schedulable", "true"),
            ],
        )
        .await?["id"]
        .as_str()
        .unwrap()
        .to_string();
    client
        .call(
            "set_host_domain_type",
            &[("host_id", &host), ("domain_type", &domain_type)],
        )
        .await?;
    let _ = client
        .call(
            "create_pool",
            &[("host_id", &host), ("name", POOL), ("path", POOL_DIR)],
        )
        .await;
    let volumes = [
        "bench-debian.qcow2",
        "bench-debian.vmlinuz",
        "bench-debian.initrd",
    ];
    let files = [
        ("debian-12.qcow2", storage::Format::Qcow2),
        ("debian-12.vmlinuz", storage::Format::Raw),
        ("debian-12.initrd", storage::Format::Raw),
    ];
    let dir = images.clone();
    state
        .hypervisors
        .call(host.parse()?, move |conn| {
            for ((file, format), name) in files.into_iter().zip(volumes) {
                let f = std::fs::File::open(dir.join(file))
                    .map_err(|_| virt::error::Error::last_error())?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                storage::upload_volume(conn, POOL, name, format, f, len)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("upload the image: {e}"))?;
    let _ = state.hypervisors.reconcile(host.parse()?).await;
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO tenants (name) VALUES ('Bench') RETURNING id")
            .fetch_one(&owner)
            .await?;
    sqlx::query("UPDATE tenant_quotas SET max_vcpus = 1000, max_memory_mib = 10000000, max_disk_gib = 100000, max_vms = 1000 WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&owner)
        .await?;
    sqlx::query("UPDATE approval_policies SET auto_max_count = 1, auto_max_vcpus = 2, auto_max_memory_mib = 4096, auto_max_lease_days = 30 WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&owner)
        .await?;
    let template = client
        .call(
            "save_template",
            &[
                ("name", "Debian 12"),
                ("os", "Debian 12"),
                ("sizes", "small 1 0.5 4"),
                ("default_lease_days", "1"),
                ("max_lease_days", "1"),
                ("tenants", "*"),
                ("image_host", &host),
                ("image_pool", POOL),
                ("image_volume", volumes[0]),
                ("image_kernel", volumes[1]),
                ("image_initrd", volumes[2]),
                ("login_user", "debian"),
            ],
        )
        .await?
        .as_str()
        .unwrap()
        .to_string();
    client
        .call(
            "publish_template",
            &[("id", &template), ("published", "true")],
        )
        .await?;
    sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) SELECT $1, id, 'requester' FROM users",
    )
    .bind(tenant)
    .execute(&owner)
    .await?;
    client.call("login", &login).await?;
    let keys = std::env::temp_dir().join(format!("concierge-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&keys)?;
    let key = keys.join("id");
    Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ""])
        .arg("-f")
        .arg(&key)
        .status()?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;
    client
        .call("add_ssh_key", &[("key", public.trim())])
        .await?;

    let t = tenant.to_string();
    for (round, count) in rounds.iter().copied().enumerate() {
        let prefixes: Vec<String> = (0..count).map(|i| format!("bench-{round}-{i}")).collect();
        let submits = prefixes.iter().map(|prefix| {
            let (client, t, template) = (&client, t.clone(), template.clone());
            async move {
                client
                    .call(
                        "submit_request",
                        &[
                            ("tenant_id", &t),
                            ("template_id", &template),
                            ("size", "small"),
                            ("count", "1"),
                            ("name_prefix", prefix),
                            ("lease_days", "1"),
                            ("purpose", "benchmark"),
                        ],
                    )
                    .await
            }
        });
        let started = Instant::now();
        for r in futures::future::join_all(submits).await {
            r?;
        }
        // Each VM's port, once placed; then SSH is tried until it lets us in.
        let mut ports: Vec<(String, u16)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while ports.len() < count && Instant::now() < deadline {
            ports = sqlx::query_as::<_, (String, i32)>(
                "SELECT name, ssh_port FROM vms WHERE name LIKE $1 AND ssh_port IS NOT NULL ORDER BY name",
            )
            .bind(format!("bench-{round}-%"))
            .fetch_all(&owner)
            .await?
            .into_iter()
            .map(|(n, p)| (n, p as u16))
            .collect();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(
            ports.len() == count,
            "round {round}: not every VM got a port"
        );
        let waits = ports.iter().map(|(vm, port)| {
            let (key, vm, port) = (key.clone(), vm.clone(), *port);
            tokio::task::spawn_blocking(move || {
                let until = Instant::now() + Duration::from_secs(900);
                while Instant::now() < until {
                    if ssh(&key, port, "true").is_some() {
                        return Some((vm, port, started.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                None
            })
        });
        let mut logged_in = Vec::new();
        for w in futures::future::join_all(waits).await {
            logged_in.push(w?.ok_or_else(|| anyhow::anyhow!("a VM never let us in"))?);
        }
        let mut total = Vec::new();
        let mut portal = Vec::new();
        let mut guest = Vec::new();
        for (vm, port, _) in &logged_in {
            // Approval → login, and approval → QEMU started, from the request log's clock.
            let (approved_to_running,): (f64,) = sqlx::query_as(
                "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.kind = 'running') - min(e.at) FILTER (WHERE e.kind = 'approved'))::float8
                 FROM requests r JOIN request_events e ON e.request_id = r.id WHERE r.name_prefix = $1",
            )
            .bind(vm)
            .fetch_one(&owner)
            .await?;
            // The guest's own share: kernel start → sshd active (the monotonic clock starts
            // with the kernel; direct kernel boot skips the firmware's boot menu).
            let sshd = ssh(
                &key,
                *port,
                "sudo -n systemctl show -p ActiveEnterTimestampMonotonic --value ssh.service",
            )
            .and_then(|us| us.trim().parse::<f64>().ok())
            .map_or(f64::NAN, |us| us / 1e6);
            // And its whole boot, once cloud-init is done.
            let line = ssh(
                &key,
                *port,
                "sudo -n cloud-init status --wait >/dev/null 2>&1; sudo -n systemd-analyze 2>/dev/null | head -1",
            )
            .unwrap_or_default();
            let (kernel, user) = boot_shares(&line).unwrap_or((f64::NAN, f64::NAN));
            portal.push(approved_to_running);
            guest.push(sshd);
            println!("  {vm}: QEMU started {approved_to_running:.2} s after approval; sshd active {sshd:.1} s after the kernel started; whole boot {kernel:.1} s kernel + {user:.1} s userspace");
        }
        // The submit returns after the approval (automatic), so `started` is the approval to
        // within a few milliseconds.
        for (_, _, at) in &logged_in {
            total.push(at.as_secs_f64());
        }
        if round == 0 {
            let vm: (String, Uuid) =
                sqlx::query_as("SELECT host_id::text, uuid FROM vms WHERE name = $1")
                    .bind(&logged_in[0].0)
                    .fetch_one(&owner)
                    .await?;
            echo(&client, &jar, &vm.0, vm.1).await?;
        }
        total.sort_by(f64::total_cmp);
        portal.sort_by(f64::total_cmp);
        guest.sort_by(f64::total_cmp);
        println!(
            "{count} VM(s) at once: approval → SSH login p50 {:.1} s, max {:.1} s; portal (approval → QEMU started) p50 {:.2} s, max {:.2} s; guest (kernel → sshd active) p50 {:.1} s",
            pct(&total, 0.5),
            pct(&total, 1.0),
            pct(&portal, 0.5),
            pct(&portal, 1.0),
            pct(&guest, 0.5),
        );
        cleanup(&client, &owner, &host).await;
    }
    for v in volumes {
        let _ = client
            .call(
                "delete_volume",
                &[("host_id", &host), ("pool", POOL), ("name", v)],
            )
            .await;
    }
    let _ = std::fs::remove_dir_all(&keys);
    state.hypervisors.stop_all();
    owner.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&maint)
        .await?;
    Ok(())
}
