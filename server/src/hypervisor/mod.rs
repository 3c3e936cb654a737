//! libvirt hosts: one actor per host (see `connection`), the lifecycle-event writer, and the
//! registry the rest of the server talks to.
pub mod connection;
pub mod cpu_weight;
pub mod domain_xml;
pub mod events;
pub mod image;
pub mod inventory;
pub mod network;
pub mod simulation;
pub mod stats;
pub mod storage;

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

/// A host actor's command channel, and the connection it holds while connected.
#[derive(Clone)]
struct Link {
    sender: std::sync::mpsc::Sender<Command>,
    live: connection::Live,
}

pub struct Hypervisors {
    pool: PgPool,
    reconcile_every: Duration,
    /// Metrics sampling period of each host; None samples nothing (benchmarks).
    sample_every: Option<Duration>,
    hosts: Mutex<HashMap<Uuid, Link>>,
    events_tx: mpsc::UnboundedSender<DomainEvent>,
    /// Event → row-updated delays, for the benchmark (bounded).
    pub event_latencies: Mutex<Vec<Duration>>,
}

impl Hypervisors {
    /// Creates the registry and starts the lifecycle-event writer. Call inside the runtime.
    pub fn new(
        pool: PgPool,
        reconcile_every: Duration,
        sample_every: Option<Duration>,
    ) -> Arc<Self> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let hv = Arc::new(Hypervisors {
            pool,
            reconcile_every,
            sample_every,
            hosts: Mutex::new(HashMap::new()),
            events_tx,
            event_latencies: Mutex::new(Vec::new()),
        });
        tokio::spawn(write_events(Arc::downgrade(&hv), events_rx));
        hv
    }

    /// Starts an actor for every registered host.
    pub async fn start_all(&self) -> Result<()> {
        let mut tx = db::begin(&self.pool, Scope::fleet()).await?;
        let hosts: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, uri FROM hosts ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        for (id, uri) in hosts {
            self.start(id, uri);
        }
        Ok(())
    }

    pub fn start(&self, id: Uuid, uri: String) {
        let live = connection::Live::default();
        let sender = connection::spawn(
            HostSpec {
                id,
                uri,
                reconcile_every: self.reconcile_every,
                sample_every: self.sample_every,
            },
            live.clone(),
            self.pool.clone(),
            tokio::runtime::Handle::current(),
            self.events_tx.clone(),
        );
        let link = Link { sender, live };
        if let Some(old) = self.hosts.lock().expect("hosts lock").insert(id, link) {
            let _ = old.sender.send(Command::Stop);
        }
    }

    pub fn stop(&self, id: Uuid) {
        if let Some(old) = self.hosts.lock().expect("hosts lock").remove(&id) {
            let _ = old.sender.send(Command::Stop);
        }
    }

    fn link(&self, id: Uuid) -> Option<Link> {
        self.hosts.lock().expect("hosts lock").get(&id).cloned()
    }

    fn sender(&self, id: Uuid) -> Option<std::sync::mpsc::Sender<Command>> {
        self.link(id).map(|l| l.sender)
    }

    /// A reconcile of one host, now (only differences are written).
    pub async fn reconcile(&self, id: Uuid) -> Result<ReconcileReport, String> {
        let sender = self.sender(id).ok_or("host is not running")?;
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
    /// queued behind the host actor's own work).
    pub async fn call<T: Send + 'static>(
        &self,
        host: Uuid,
        f: impl FnOnce(&virt::connect::Connect) -> Result<T, virt::error::Error> + Send + 'static,
    ) -> Result<T, String> {
        let link = self.link(host).ok_or("the host is not connected")?;
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

    /// Runs a lifecycle action on the host's actor thread.
    pub async fn lifecycle(
        &self,
        host: Uuid,
        uuid: Uuid,
        action: connection::Action,
    ) -> Result<(), String> {
        let sender = self.sender(host).ok_or("the host is not connected")?;
        let (tx, rx) = oneshot::channel();
        sender
            .send(Command::Lifecycle(uuid, action, tx))
            .map_err(|_| "host actor stopped")?;
        rx.await.map_err(|_| "host actor stopped".to_string())?
    }

    pub fn stop_all(&self) {
        for (_, s) in self.hosts.lock().expect("hosts lock").drain() {
            let _ = s.sender.send(Command::Stop);
        }
    }
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
        let applied = inventory::apply_events(&hv.pool, &rows)
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
    id: Uuid,
    state: &str,
    reason: Option<&str>,
) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query(
        "UPDATE hosts SET state = $2, state_reason = $3,
                state_since = CASE WHEN state <> $2 THEN now() ELSE state_since END
         WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(tx.commit().await?)
}

pub async fn write_domain(pool: &PgPool, host: Uuid, d: &DomainFacts) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    inventory::upsert_domains(&mut tx, host, &[d]).await?;
    Ok(tx.commit().await?)
}

pub async fn mark_missing(pool: &PgPool, host: Uuid, uuid: Uuid) -> Result<()> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
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
