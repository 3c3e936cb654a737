//! A host reached over SSH for real: Debian's sshd on loopback (key-only, started by the
//! test), the real libvirtd behind it. Registration shows the key the host presents and
//! pins it once confirmed; inventory and a lifecycle action work through it; a cut
//! connection marks the host lost and it reconnects. Runs with the libvirtd tests
//! (`CONCIERGE_LIBVIRTD_TESTS=1`, as root: sshd wants root for its privilege separation).

use crate::common::*;
use crate::libvirtd::{domain_row, enabled, plain_domain_xml, wait_host, Leftovers, ONE_AT_A_TIME};
use app::fleet::{HostDetail, HostSummary};
use concierge::hypervisor::connection::Action;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// sshd on a free loopback port with its own host key, accepting only `client_key` for root.
struct Sshd {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
    client_key: String,
    /// The host key's SHA-256 fingerprint.
    fingerprint: String,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = std::env::temp_dir().join(format!("concierge-sshd-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let keygen = |name: &str| {
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(name))
                .status()
                .expect("ssh-keygen")
                .success();
            assert!(ok, "ssh-keygen {name}");
        };
        keygen("host_key");
        keygen("client_key");
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile {d}/sshd.pid\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .spawn()
            .expect("start sshd (scripts/test installs openssh-server)");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let public = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        let (_, fingerprint) = concierge::hypervisor::remote::parse_key(&public).unwrap();
        Sshd {
            child,
            client_key: dir.join("client_key").display().to_string(),
            dir,
            port,
            fingerprint,
        }
    }

    /// Ends this sshd's sessions (its children; the listener stays): what a network cut does
    /// to a connection. Nobody else's SSH session is touched.
    fn cut_sessions(&self) {
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_host_over_ssh_is_pinned_inventoried_acted_on_and_reconnects() {
    if !enabled("remote::a_host_over_ssh_is_pinned_inventoried_acted_on_and_reconnects") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let sshd = Sshd::start();
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let uri = format!(
        "qemu+ssh://root@127.0.0.1:{}/system?keyfile={}",
        sshd.port, sshd.client_key
    );
    let register = |key: String| {
        let (admin, uri) = (admin.clone(), uri.clone());
        async move {
            admin
                .call_as::<HostSummary>(
                    "register_host",
                    &[
                        ("name", "remote"),
                        ("uri", &uri),
                        ("schedulable", "true"),
                        ("ssh_host_key", &key),
                    ],
                )
                .await
        }
    };
    // Unconfirmed: the field says which key the host presents, and nothing is saved.
    let r = register(String::new()).await;
    let message = assert_field_error(&r, "ssh_host_key");
    assert!(message.contains(&sshd.fingerprint), "{message}");
    // A key that is not the host's is refused.
    let r = register("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()).await;
    assert!(assert_field_error(&r, "ssh_host_key").contains("not the key entered"));
    assert_eq!(app.scalar_i64("SELECT count(*) FROM hosts").await, 0);
    // Confirmed: pinned, connected, inventoried.
    let host = register(sshd.fingerprint.clone())
        .await
        .expect("register the SSH host");
    assert_eq!(
        host.ssh_host_key.as_deref(),
        Some(sshd.fingerprint.as_str())
    );
    assert!(!host.ssh_unverified);
    let id = host.id.to_string();
    wait_host(&admin, &id, "connected", 30).await;
    let detail: HostDetail = admin
        .call_as("get_host", &[("host_id", &id)])
        .await
        .unwrap();
    assert!(detail.host.lib_version.is_some() && detail.host.cpus.is_some());
    // A lifecycle action through the SSH connection: define, start, force off.
    let mut leftovers = Leftovers::default();
    let uuid = Uuid::new_v4();
    let name = format!("cc-ssh-{}", &uuid.simple().to_string()[..8]);
    leftovers.domains.push(uuid);
    let hv = app.state.hypervisors.clone();
    let (n, u) = (name.clone(), uuid);
    hv.call(host.id, move |conn| {
        let xml = plain_domain_xml(conn, &n, u, 64, None);
        conn.define_domain_xml(&xml).map(|_| ())
    })
    .await
    .expect("define through SSH");
    hv.lifecycle(host.id, uuid, Action::Start)
        .await
        .expect("start through SSH");
    assert_eq!(
        domain_row(&app.db, &id, uuid).await.map(|r| r.0).as_deref(),
        Some("running")
    );
    hv.lifecycle(host.id, uuid, Action::ForceOff)
        .await
        .expect("force off through SSH");
    assert_eq!(
        domain_row(&app.db, &id, uuid).await.map(|r| r.0).as_deref(),
        Some("shutoff")
    );
    // The SSH connection cut: lost, then connected again by itself.
    sshd.cut_sessions();
    wait_host(&admin, &id, "lost", 40).await;
    wait_host(&admin, &id, "connected", 60).await;
    drop(leftovers);
    app.state.hypervisors.stop_all();
}
