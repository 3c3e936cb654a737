//! Browser consoles: the backend of the `Consoles` seam and the WebSocket proxy behind
//! `/console/ws`.
//!
//! Opening a console is a POST (same-origin, audited, authorised exactly like lifecycle
//! actions) that returns a single-use ticket: 256 random bits, stored as SHA-256, bound to the
//! user, their portal session and one VM, valid 30 s. The WebSocket upgrade is a GET, which the
//! same-origin layer lets through, so it checks `Origin` itself, then spends the ticket. While
//! the proxy runs, a watchdog re-reads the portal session and the VM's access every 2 s and
//! ends the console when either is gone. Each console session is a row (started, ended, why)
//! with audit rows at both ends.
//!
//! Serial consoles use libvirt's console stream, so they work on remote hosts too. Graphical
//! consoles take the VNC display's socket from `virDomainOpenGraphicsFD`, which passes a file
//! descriptor and therefore works only where libvirtd runs on the portal's own machine (local
//! URIs); a remote host would need a tunnel to its socket, which is not built yet.
use crate::platform::audit::{self, Event, Origin};
use crate::platform::authz;
use crate::platform::clock::Clock;
use crate::platform::db::{self, Scope};
use crate::platform::error::{seam, Result};
use app::account::Actor;
use app::console::{ConsoleKind, ConsoleTicket};
use app::error::AppError;
use app::seam::{Consoles, RequestCtx};
use async_trait::async_trait;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long a ticket may wait for its WebSocket.
pub const TICKET_SECONDS: i64 = 30;
/// How often an open console re-checks the session and the VM's access.
const RECHECK: Duration = Duration::from_secs(2);

pub struct ConsolesBackend {
    pub pool: PgPool,
    pub clock: Arc<dyn Clock>,
}

fn hash(ticket: &str) -> String {
    let digest = Sha256::digest(ticket.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The VM if `actor` may act on it (as on lifecycle actions) and libvirt still lists it,
/// with the scope its console rows are written in.
async fn vm_access(
    pool: &PgPool,
    actor: &Actor,
    host_id: Uuid,
    uuid: Uuid,
) -> Result<(super::vms::VmRow, Scope)> {
    let (vm, scope) =
        super::vms::authorized_vm(pool, actor, host_id, uuid, authz::Access::Act).await?;
    if vm.domain.missing {
        return Err(AppError::NotFound("VM".into()).into());
    }
    Ok((vm, scope))
}

/// libvirt passes the display's file descriptor only over its local socket.
fn local_uri(uri: &str) -> bool {
    uri.split_once("://")
        .is_some_and(|(scheme, rest)| !scheme.contains('+') && rest.starts_with('/'))
}

#[async_trait]
impl Consoles for ConsolesBackend {
    async fn ticket(
        &self,
        req: &RequestCtx,
        host_id: Uuid,
        uuid: Uuid,
        kind: &str,
    ) -> Result<ConsoleTicket, AppError> {
        seam(async move {
            let actor = req.actor()?;
            let kind = ConsoleKind::parse(kind)?;
            let (vm, scope) = vm_access(&self.pool, actor, host_id, uuid).await?;
            if vm.domain.state != "running" {
                return Err(AppError::Conflict(
                    "The VM is not running: start it to open its console.".into(),
                ).into());
            }
            if kind == ConsoleKind::Graphical && !local_uri(&vm.uri) {
                return Err(AppError::Conflict(
                    "The graphical console works for hosts on the portal's own machine only; use the serial console.".into(),
                ).into());
            }
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let now = self.clock.now();
            let mut tx = db::begin(&self.pool, scope).await?;
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO console_sessions (ticket_hash, user_id, session_id, tenant_id, host_id, vm_uuid, kind, issued_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            )
            .bind(hash(&ticket))
            .bind(actor.user_id)
            .bind(actor.session_id)
            .bind(vm.tenant_id)
            .bind(host_id)
            .bind(uuid)
            .bind(kind.as_str())
            .bind(now)
            .bind(now + time::Duration::seconds(TICKET_SECONDS))
            .fetch_one(&mut *tx)
            .await?;
            let mut event = Event::new("console.ticket", "vm", uuid)
                .after(json!({ "console": id, "kind": kind.as_str(), "host": host_id }));
            if let Some(t) = vm.tenant_id {
                event = event.tenant(t);
            }
            audit::record(&mut tx, &Origin::of(req), event).await?;
            tx.commit().await?;
            Ok(ConsoleTicket {
                url: format!("/console/ws?ticket={ticket}"),
                expires_in_seconds: TICKET_SECONDS as u32,
            })
    }).await
    }
}

/// What the upgrade needs from the server.
#[derive(Clone)]
pub struct Proxy {
    pub pool: PgPool,
    pub public_origin: String,
    pub clock: Arc<dyn Clock>,
    /// Re-reads the viewer's portal session (None once it ended).
    pub session: crate::platform::live::Recheck,
}

#[derive(sqlx::FromRow)]
struct Spent {
    id: Uuid,
    session_id: Uuid,
    tenant_id: Option<Uuid>,
    host_id: Uuid,
    vm_uuid: Uuid,
    kind: String,
}

/// `GET /console/ws?ticket=…`: checks the origin and the ticket, then proxies.
pub async fn upgrade(
    proxy: Proxy,
    ws: WebSocketUpgrade,
    origin: Option<String>,
    actor: Option<Actor>,
    ticket: Option<String>,
) -> Response {
    // Browsers always send Origin with a WebSocket handshake; a page of another site
    // sends its own.
    if origin.as_deref() != Some(proxy.public_origin.as_str()) {
        return (StatusCode::FORBIDDEN, "Cross-site console refused.").into_response();
    }
    let Some(actor) = actor else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Some(ticket) = ticket.filter(|t| t.len() <= 64) else {
        return (StatusCode::FORBIDDEN, "A console ticket is needed.").into_response();
    };
    let now = proxy.clock.now();
    let spent: Result<Option<Spent>> = async {
        let mut tx = db::begin(&proxy.pool, Scope::fleet()).await?;
        let row = sqlx::query_as(
            "UPDATE console_sessions SET started_at = $3
             WHERE ticket_hash = $1 AND user_id = $2 AND started_at IS NULL AND expires_at > $3
             RETURNING id, session_id, tenant_id, host_id, vm_uuid, kind",
        )
        .bind(hash(&ticket))
        .bind(actor.user_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }
    .await;
    let spent = match spent {
        Ok(Some(s)) if s.session_id == actor.session_id => s,
        Ok(_) => {
            return (
                StatusCode::FORBIDDEN,
                "This console ticket was used, has expired or is someone else's: open the console again.",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "spending a console ticket");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    // Access may have ended since the ticket was issued.
    let vm = match vm_access(&proxy.pool, &actor, spent.host_id, spent.vm_uuid).await {
        Ok((vm, _)) => vm,
        Err(e) => {
            close(&proxy, &spent, &actor, "access ended").await;
            return AppError::from(e).status().into_response();
        }
    };
    let _ = record(
        &proxy,
        &spent,
        &actor,
        "console.open",
        json!({ "kind": spent.kind }),
    )
    .await;
    // The console opens its own connection, checking an SSH host's key like every other.
    let uri = crate::hypervisor::remote::effective(&vm.uri, vm.ssh_host_key.as_deref())
        .unwrap_or_else(|_| vm.uri.clone());
    ws.on_upgrade(move |socket| async move {
        let reason = run(&proxy, &spent, &uri, socket).await;
        close(&proxy, &spent, &actor, &reason).await;
    })
}

async fn record(
    proxy: &Proxy,
    spent: &Spent,
    actor: &Actor,
    action: &str,
    after: serde_json::Value,
) -> Result<()> {
    let mut tx = db::begin(&proxy.pool, Scope::fleet()).await?;
    let mut event = Event::new(action, "vm", spent.vm_uuid).after(json!({
        "console": spent.id, "user": actor.user_id, "details": after,
    }));
    if let Some(t) = spent.tenant_id {
        event = event.tenant(t);
    }
    audit::record(&mut tx, &Origin::default(), event).await?;
    Ok(tx.commit().await?)
}

async fn close(proxy: &Proxy, spent: &Spent, actor: &Actor, reason: &str) {
    let now = proxy.clock.now();
    let result: Result<()> = async {
        let mut tx = db::begin(&proxy.pool, Scope::fleet()).await?;
        sqlx::query(
            "UPDATE console_sessions SET ended_at = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL",
        )
        .bind(spent.id)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        Ok(tx.commit().await?)
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "recording a console's end");
    }
    let _ = record(
        proxy,
        spent,
        actor,
        "console.close",
        json!({ "reason": reason }),
    )
    .await;
}

/// Proxies until either side closes or access ends; returns why it ended.
async fn run(proxy: &Proxy, spent: &Spent, uri: &str, socket: WebSocket) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let (to_browser, mut from_guest) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let (to_guest, from_browser) = std::sync::mpsc::channel::<Vec<u8>>();
    let guest = match spent.kind.as_str() {
        "serial" => {
            let (uri, uuid, stop) = (uri.to_string(), spent.vm_uuid, stop.clone());
            tokio::task::spawn_blocking(move || serial(&uri, uuid, &stop, to_browser, from_browser))
        }
        _ => {
            let (uri, uuid, stop) = (uri.to_string(), spent.vm_uuid, stop.clone());
            tokio::task::spawn_blocking(move || {
                graphical(&uri, uuid, &stop, to_browser, from_browser)
            })
        }
    };
    let (mut sink, mut stream) = socket.split();
    let mut watchdog = tokio::time::interval(RECHECK);
    watchdog.tick().await;
    let reason = loop {
        tokio::select! {
            out = from_guest.recv() => match out {
                Some(bytes) => {
                    if sink.send(Message::Binary(bytes.into())).await.is_err() {
                        break "browser went away".to_string();
                    }
                }
                None => break "the console closed".to_string(),
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => { let _ = to_guest.send(b.to_vec()); }
                Some(Ok(Message::Text(t))) => { let _ = to_guest.send(t.as_bytes().to_vec()); }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "closed by the browser".to_string(),
                Some(Ok(_)) => {}
            },
            _ = watchdog.tick() => {
                match (proxy.session)().await {
                    None => break "signed out".to_string(),
                    Some(now) => {
                        if vm_access(&proxy.pool, &now, spent.host_id, spent.vm_uuid).await.is_err() {
                            break "access ended".to_string();
                        }
                    }
                }
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: reason.clone().into(),
        })))
        .await;
    match guest.await {
        Ok(Err(e)) => format!("{reason} ({e})"),
        _ => reason,
    }
}

fn open(uri: &str) -> Result<virt::connect::Connect, String> {
    crate::hypervisor::events::ensure_event_loop();
    virt::connect::Connect::open(Some(uri)).map_err(|e| e.message().to_string())
}

/// The guest's serial console through a non-blocking libvirt stream, polled every 5 ms by
/// this one thread (which also writes to it), so the stream is never used from two threads.
fn serial(
    uri: &str,
    uuid: Uuid,
    stop: &AtomicBool,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    input: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    let conn = open(uri)?;
    let result = (|| {
        let dom = conn
            .lookup_domain_by_uuid(uuid)
            .map_err(|e| e.message().to_string())?;
        let stream = virt::stream::Stream::new(&conn, virt_sys::VIR_STREAM_NONBLOCK)
            .map_err(|e| e.message().to_string())?;
        // FORCE: a second viewer takes the console over (libvirt allows one at a time).
        dom.open_console(None, &stream, virt_sys::VIR_DOMAIN_CONSOLE_FORCE)
            .map_err(|e| e.message().to_string())?;
        let mut buf = vec![0u8; 16 * 1024];
        let r = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let mut idle = true;
            // SAFETY: a valid stream and buffer; -2 means "nothing now" on a non-blocking stream.
            let n = unsafe {
                virt_sys::virStreamRecv(stream.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            match n {
                n if n > 0 => {
                    idle = false;
                    if out.blocking_send(buf[..n as usize].to_vec()).is_err() {
                        break Ok(());
                    }
                }
                0 => break Ok(()),
                -2 => {}
                _ => break Err("the console stream failed".to_string()),
            }
            while let Ok(data) = input.try_recv() {
                idle = false;
                let mut sent = 0;
                while sent < data.len() && !stop.load(Ordering::Relaxed) {
                    // SAFETY: as above.
                    let k = unsafe {
                        virt_sys::virStreamSend(
                            stream.as_ptr(),
                            data[sent..].as_ptr() as *mut _,
                            data.len() - sent,
                        )
                    };
                    match k {
                        k if k > 0 => sent += k as usize,
                        -2 => std::thread::sleep(Duration::from_millis(2)),
                        _ => return Err("writing to the console failed".to_string()),
                    }
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let _ = stream.abort();
        r
    })();
    crate::hypervisor::events::close(conn);
    result
}

/// The guest's VNC display: libvirt hands over a connected socket, bytes go both ways.
fn graphical(
    uri: &str,
    uuid: Uuid,
    stop: &AtomicBool,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
    input: std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let conn = open(uri)?;
    let fd = conn
        .lookup_domain_by_uuid(uuid)
        .and_then(|dom| dom.open_graphics_fd(0, 0))
        .map_err(|e| e.message().to_string());
    crate::hypervisor::events::close(conn);
    let fd = fd?;
    // SAFETY: libvirt gives us a new, connected socket that nothing else owns.
    let mut sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd as i32) };
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match sock.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                if out.blocking_send(buf[..n].to_vec()).is_err() {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.to_string()),
        }
        while let Ok(data) = input.try_recv() {
            sock.write_all(&data).map_err(|e| e.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphical_consoles_need_a_local_host() {
        assert!(local_uri("qemu:///system"));
        assert!(local_uri("qemu:///session"));
        assert!(!local_uri("qemu+ssh://root@host/system"));
        assert!(!local_uri("qemu+tcp://host/system"));
        assert!(!local_uri("qemu://host/system"));
    }

    #[test]
    fn tickets_are_stored_hashed() {
        let h = hash("abc");
        assert_eq!(h.len(), 64);
        assert_ne!(h, "abc");
    }
}
