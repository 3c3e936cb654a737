//! libvirt hosts: one actor per host (see `connection`), the lifecycle-event writer, and the
//! registry the rest of the server talks to.
pub mod connection;
pub mod cpu_weight;
pub mod domain_xml;
pub mod events;
pub mod image;
pub mod inventory;
pub mod network;
pub mod ownership;
pub mod remote;
pub mod simulation;
pub mod stats;
pub mod storage;

use crate::platform::cluster::Fence;
use crate::platform::db::{self, Scope};
use crate::platform::error::Result;
use connection::{Command, HostSpec, ReconcileReport};
use events::DomainEvent;
use inventory::DomainFacts;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A host actor's command channel, the connection it holds while connected, and the lease
/// it runs under.
#[derive(Clone)]
struct Link {
    sender: std::sync::mpsc::Sender<Command>,
    live: connection::Live,
    fence: Fence,
}

/// The hosts this replica runs actors for (those whose lease it holds, see `ownership`), and
/// the way to every other host: a short connection of its own for each call.
pub struct Hypervisors {
    pool: PgPool,
    /// This replica.
    replica: Uuid,
    reconcile_every: Duration,
    /// Metrics sampling period of each host; None samples nothing (benchmarks).
    sample_every: Option<Duration>,
    hosts: Mutex<HashMap<Uuid, Link>>,
    /// Every host's URI, as of the last ownership round, for calls to hosts owned elsewhere.
    uris: Mutex<HashMap<Uuid, String>>,
    /// One ownership round at a time (the timer's and one asked for at registration).
    rounds: tokio::sync::Mutex<()>,
    /// Set once this replica stops: no more rounds, no more actors.
    stopped: std::sync::atomic::AtomicBool,
    events_tx: mpsc::UnboundedSender<DomainEvent>,
    /// Event → row-updated delays, for the benchmark (bounded).
    pub event_latencies: Mutex<Vec<Duration>>,
}

impl Hypervisors {
    /// Creates the registry and starts the lifecycle-event writer. Call inside the runtime.
    pub fn new(
        pool: PgPool,
        replica: Uuid,
        reconcile_every: Duration,
        sample_every: Option<Duration>,
    ) -> Arc<Self> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let hv = Arc::new(Hypervisors {
            pool,
            replica,
            reconcile_every,
            sample_every,
            hosts: Mutex::new(HashMap::new()),
            uris: Mutex::new(HashMap::new()),
            rounds: tokio::sync::Mutex::new(()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            events_tx,
            event_latencies: Mutex::new(Vec::new()),
        });
        tokio::spawn(write_events(Arc::downgrade(&hv), events_rx));
        hv
    }

    /// One ownership round now: claims what this replica ranks first for (every host when it
    /// is the only replica) and starts their actors. Called at start, after a host is
    /// registered, and by `spawn_rounds`.
    pub async fn claim_now(&self) -> Result<ownership::Round> {
        let _one = self.rounds.lock().await;
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Default::default());
        }
        ownership::round(self, self.replica).await
    }

    /// Renews, hands back and claims every `ownership::ROUND_EVERY` until the replica stops.
    pub fn spawn_rounds(self: &Arc<Self>) {
        let hv = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ownership::ROUND_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hv) = hv.upgrade() else { return };
                if hv.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                match hv.claim_now().await {
                    Ok(r)
                        if !r.claimed.is_empty()
                            || !r.released.is_empty()
                            || !r.lost.is_empty() =>
                    {
                        tracing::info!(
                            claimed = r.claimed.len(),
                            released = r.released.len(),
                            lost = r.lost.len(),
                            owned = r.owned,
                            "host leases"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "host lease round"),
                }
            }
        });
    }

    /// Stops every actor and hands their leases back, so other replicas take the hosts over
    /// at their next round (a graceful stop).
    pub async fn leave(&self) -> Result<u64> {
        let _one = self.rounds.lock().await;
        ownership::release_all(self, self.replica).await
    }

    fn remember_uris(&self, uris: impl Iterator<Item = (Uuid, String)>) {
        *self.uris.lock().expect("uris lock") = uris.collect();
    }

    /// The lease a host's actor runs under here, if it runs here.
    fn running_under(&self, id: Uuid) -> Option<Fence> {
        self.link(id).map(|l| l.fence)
    }

    fn running(&self) -> Vec<Uuid> {
        self.hosts
            .lock()
            .expect("hosts lock")
            .keys()
            .copied()
            .collect()
    }

    /// Whether this replica runs the host's actor.
    pub fn owns(&self, id: Uuid) -> bool {
        self.link(id).is_some()
    }

    fn start(&self, id: Uuid, uri: String, fence: Fence) {
        let live = connection::Live::default();
        let sender = connection::spawn(
            HostSpec {
                id,
                uri,
                reconcile_every: self.reconcile_every,
                sample_every: self.sample_every,
                fence,
            },
            live.clone(),
            self.pool.clone(),
            tokio::runtime::Handle::current(),
            self.events_tx.clone(),
        );
        let link = Link {
            sender,
            live,
            fence,
        };
        if let Some(old) = self.hosts.lock().expect("hosts lock").insert(id, link) {
            let _ = old.sender.send(Command::Stop);
        }
    }

    fn stop(&self, id: Uuid) {
        if let Some(old) = self.hosts.lock().expect("hosts lock").remove(&id) {
            let _ = old.sender.send(Command::Stop);
        }
    }

    /// What another replica asked of the hosts this one owns (the cluster channel):
    /// `refresh:<host>:<uuid>` re-reads a domain, `reconcile:<host>` a whole host.
    pub fn on_cluster(&self, what: &str) {
        let mut parts = what.split(':');
        let (kind, host) = (parts.next(), parts.next().and_then(|h| h.parse().ok()));
        let Some(sender) = host.and_then(|h| self.sender(h)) else {
            return;
        };
        match (kind, parts.next().and_then(|u| u.parse().ok())) {
            (Some("refresh"), Some(uuid)) => {
                let _ = sender.send(Command::RefreshDomain(uuid));
            }
            (Some("reconcile"), None) => {
                let (tx, _) = oneshot::channel();
                let _ = sender.send(Command::Reconcile(tx));
            }
            _ => {}
        }
    }

    /// Asks the replica that owns `host` (this one included) to do `what` (see `on_cluster`).
    async fn ask_owner(&self, what: String) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::platform::cluster::CHANNEL)
            .bind(what)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A host owned elsewhere: its URI, for a connection of this replica's own.
    fn uri_of(&self, id: Uuid) -> Option<String> {
        self.uris.lock().expect("uris lock").get(&id).cloned()
    }

    fn link(&self, id: Uuid) -> Option<Link> {
        self.hosts.lock().expect("hosts lock").get(&id).cloned()
    }

    fn sender(&self, id: Uuid) -> Option<std::sync::mpsc::Sender<Command>> {
        self.link(id).map(|l| l.sender)
    }

    /// A reconcile of one host, now (only differences are written). A host owned by another
    /// replica is reconciled there: this asks for it and answers at once.
    pub async fn reconcile(&self, id: Uuid) -> Result<ReconcileReport, String> {
        let Some(sender) = self.sender(id) else {
            self.ask_owner(format!("reconcile:{id}"))
                .await
                .map_err(|e| e.to_string())?;
            return Err("the host is reconciled by the replica that owns it".into());
        };
        let (tx, rx) = oneshot::channel();
        sender
            .send(Command::Reconcile(tx))
            .map_err(|_| "host actor stopped")?;
        rx.await.map_err(|_| "host actor stopped".to_string())?
    }

    /// Reconciles every host concurrently (each on its own thread); `full` re-reads and
    /// re-writes everything instead of only the differences.
    pub async fn reconcile_all(&self, full: bool) -> Vec<(Uuid, Result<ReconcileReport, String>)> {
        let ids: Vec<Uuid> = self
            .hosts
            .lock()
            .expect("hosts lock")
            .keys()
            .copied()
            .collect();
        // Send every request first so all hosts work at once, then collect the answers.
        let pending: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let (tx, rx) = oneshot::channel();
                let command = if full {
                    Command::FullReconcile(tx)
                } else {
                    Command::Reconcile(tx)
                };
                let sent = self.sender(id).is_some_and(|s| s.send(command).is_ok());
                (id, sent, rx)
            })
            .collect();
        let mut out = Vec::with_capacity(pending.len());
        for (id, sent, rx) in pending {
            let result = if sent {
                rx.await
                    .unwrap_or_else(|_| Err("host actor stopped".into()))
            } else {
                Err("host is not running".into())
            };
            out.push((id, result));
        }
        out
    }

    /// Runs `f` with the host's connection on a blocking thread (never on the executor, never
    /// queued behind the host actor's own work). A host owned by another replica gets a
    /// connection of this replica's own for the call.
    pub async fn call<T: Send + 'static>(
        &self,
        host: Uuid,
        f: impl FnOnce(&virt::connect::Connect) -> Result<T, virt::error::Error> + Send + 'static,
    ) -> Result<T, String> {
        let Some(link) = self.link(host) else {
            let uri = self.uri_of(host).ok_or("the host is not connected")?;
            return visit(uri, f).await;
        };
        let shared = link.live.lock().expect("live connection lock").clone();
        if let Some(conn) = shared {
            return tokio::task::spawn_blocking(move || {
                let result = f(&conn).map_err(|e| e.message().to_string());
                events::close(conn);
                result
            })
            .await
            .map_err(|_| "a libvirt call panicked".to_string())?;
        }
        // Not connected: the actor answers (unreachable) while it waits to reconnect.
        let sender = link.sender;
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |conn: Option<&virt::connect::Connect>| {
            let result = match conn {
                Some(conn) => f(conn).map_err(|e| e.message().to_string()),
                None => Err("the host is unreachable".to_string()),
            };
            let _ = tx.send(result);
        });
        sender
            .send(Command::Call(job))
            .map_err(|_| "host actor stopped")?;
        rx.await.map_err(|_| "host actor stopped".to_string())?
    }

    /// Runs a lifecycle action; the domain's row is re-read before the answer. Here, on the
    /// host actor's thread; for a host owned by another replica, on a connection of this
    /// replica's own, then the owner is asked to re-read the domain and the answer waits
    /// (up to 3 s) for its row to show an observation from after the action.
    pub async fn lifecycle(
        &self,
        host: Uuid,
        uuid: Uuid,
        action: connection::Action,
    ) -> Result<(), String> {
        let Some(sender) = self.sender(host) else {
            let uri = self.uri_of(host).ok_or("the host is not connected")?;
            let result = visit(uri, move |conn| connection::run_action(conn, uuid, action)).await;
            let acted = time::OffsetDateTime::now_utc();
            if self
                .ask_owner(format!("refresh:{host}:{uuid}"))
                .await
                .is_ok()
            {
                self.wait_observed(host, uuid, acted).await;
            }
            return result;
        };
        let (tx, rx) = oneshot::channel();
        sender
            .send(Command::Lifecycle(uuid, action, tx))
            .map_err(|_| "host actor stopped")?;
        rx.await.map_err(|_| "host actor stopped".to_string())?
    }

    /// Waits until the domain's row holds an observation made at or after `after` (or the
    /// domain is gone from the host), for at most 3 s.
    async fn wait_observed(&self, host: Uuid, uuid: Uuid, after: time::OffsetDateTime) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let seen = async {
                let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
                let seen: Option<bool> = sqlx::query_scalar(
                    "SELECT state_observed_at >= $3 OR missing_since IS NOT NULL FROM domains
                     WHERE host_id = $1 AND uuid = $2",
                )
                .bind(host)
                .bind(uuid)
                .bind(after)
                .fetch_optional(&mut *tx)
                .await?;
                db::done(tx);
                Ok::<_, crate::platform::error::Error>(seen)
            };
            // No row (a domain the owner has not read yet) or an error: nothing to wait for.
            if seen.await.ok().flatten() != Some(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops every actor for good (the replica is stopping; tests end this way): no round
    /// starts them again.
    pub fn stop_all(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for (_, s) in self.hosts.lock().expect("hosts lock").drain() {
            let _ = s.sender.send(Command::Stop);
        }
    }
}

/// libvirt's test driver, opened in this process (`test:///…`) or through a daemon that keeps
/// it (`test+unix:///default?socket=…`: simulated hosts several replicas share, as in the
/// replica tests). It takes no shutdown flags and runs no real guests.
pub fn is_test_driver(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.split('+').next() == Some("test"))
}

/// Runs `f` on a connection of this replica's own to a host another replica owns, opened
/// for the call and closed after it, on a blocking thread.
async fn visit<T: Send + 'static>(
    uri: String,
    f: impl FnOnce(&virt::connect::Connect) -> Result<T, virt::error::Error> + Send + 'static,
) -> Result<T, String> {
    // A simulated host from a node file lives in the memory of the process that opened it:
    // a second connection would act on a copy of its own and diverge silently.
    if uri.starts_with("test://") && uri != "test:///default" {
        return Err("this simulated host lives in the replica that runs it; another replica cannot act on it".into());
    }
    tokio::task::spawn_blocking(move || {
        events::ensure_event_loop();
        let conn = virt::connect::Connect::open(Some(&uri)).map_err(|e| e.message().to_string())?;
        let result = f(&conn).map_err(|e| e.message().to_string());
        events::close(conn);
        result
    })
    .await
    .map_err(|_| "a libvirt call panicked".to_string())?
}

/// Applies lifecycle events to domain rows as they arrive. A burst (a hundred hosts at once)
/// is written in one transaction: one event per commit would queue them behind each other's
/// disk flushes.
async fn write_events(
    hv: std::sync::Weak<Hypervisors>,
    mut rx: mpsc::UnboundedReceiver<DomainEvent>,
) {
    while let Some(first) = rx.recv().await {
        let Some(hv) = hv.upgrade() else { return };
        let mut batch = vec![first];
        while batch.len() < 2_000 {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        // The last event of each domain wins; the others only count for latency.
        let mut last: HashMap<(Uuid, Uuid), (&'static str, &'static str, time::OffsetDateTime)> =
            HashMap::new();
        let mut refresh = Vec::new();
        for ev in &batch {
            match events::state_after(ev.event) {
                Some(state) => {
                    last.insert(
                        (ev.host, ev.uuid),
                        (state, events::event_name(ev.event), ev.seen),
                    );
                }
                None => refresh.push((ev.host, ev.uuid)),
            }
        }
        let rows: Vec<(Uuid, Uuid, &str, &str, time::OffsetDateTime)> = last
            .iter()
            .map(|((h, u), (s, r, seen))| (*h, *u, *s, *r, *seen))
            .collect();
        let applied = inventory::apply_events(&hv.pool, &rows, |h| hv.running_under(h))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not apply domain events");
                Default::default()
            });
        {
            let mut l = hv.event_latencies.lock().expect("latency lock");
            for ev in &batch {
                if applied.contains(&(ev.host, ev.uuid)) && l.len() < 100_000 {
                    l.push(ev.at.elapsed());
                }
            }
        }
        // New, redefined or undefined domains, and rows we do not have: let the host re-read.
        for (h, u) in refresh.into_iter().chain(
            rows.iter()
                .map(|(h, u, ..)| (*h, *u))
                .filter(|k| !applied.contains(k)),
        ) {
            if let Some(s) = hv.sender(h) {
                let _ = s.send(Command::RefreshDomain(u));
            }
        }
    }
}

pub async fn set_host_state(
    pool: &PgPool,
    fence: Fence,
    id: Uuid,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    fence.hold(&mut tx, id).await?;
    sqlx::query(
        "UPDATE hosts SET state = $2, state_reason = $3, lease_epoch = $4,
                state_since = CASE WHEN state <> $2 THEN now() ELSE state_since END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(reason)
    .bind(fence.epoch)
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

/// Writes what was just read of one domain. The host's actor writes under its lease
/// (`Some(fence)`); a provisioning or day-2 step on any replica writes its own fresh read
/// (`None`), which, like every observation, never replaces a newer one.
pub async fn write_domain(
    pool: &PgPool,
    fence: Option<Fence>,
    host: Uuid,
    d: &DomainFacts,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    if let Some(fence) = fence {
        fence.hold(&mut tx, host).await?;
    }
    inventory::upsert_domains(&mut tx, host, &[d]).await?;
    Ok(tx.commit().await?)
}

/// Marks a domain gone from its host (`fence` as for `write_domain`).
pub async fn mark_missing(
    pool: &PgPool,
    fence: Option<Fence>,
    host: Uuid,
    uuid: Uuid,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    if let Some(fence) = fence {
        fence.hold(&mut tx, host).await?;
    }
    sqlx::query("UPDATE domains SET missing_since = now() WHERE host_id = $1 AND uuid = $2 AND missing_since IS NULL")
        .bind(host)
        .bind(uuid)
        .execute(&mut *tx)
        .await?;
    Ok(tx.commit().await?)
}

/// Opens `uri` once (off the executor) and reads the node's facts: the check run before a host
/// is saved. The error is libvirt's own message.
pub async fn probe(uri: &str) -> Result<inventory::HostFacts, String> {
    let uri = uri.to_owned();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        events::ensure_event_loop();
        let conn = virt::connect::Connect::open(Some(&uri)).map_err(|e| e.message().to_string())?;
        let facts = inventory::collect(&conn, &HashMap::new()).map(|s| s.host);
        events::close(conn);
        facts.map_err(|e| e.message().to_string())
    })
    .await
    .map_err(|e| e.to_string())?
    .inspect(|_| tracing::debug!(ms = started.elapsed().as_millis() as u64, "probed a host"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_test_driver_is_known_by_its_scheme_with_or_without_a_transport() {
        for uri in [
            "test:///default",
            "test:///tmp/node.xml",
            "test+unix:///default?socket=/run/h01/libvirt-sock",
        ] {
            assert!(super::is_test_driver(uri), "{uri}");
        }
        for uri in [
            "qemu:///system",
            "qemu+ssh://root@h1/system",
            "testing:///x",
            "qemu:///test:",
        ] {
            assert!(!super::is_test_driver(uri), "{uri}");
        }
    }
}
