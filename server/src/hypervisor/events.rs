//! libvirt's default event loop (one thread for the whole process) and the two callbacks the
//! `virt` crate does not wrap: domain lifecycle events and connection close.
use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::OnceLock;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;
use virt::connect::Connect;
use virt_sys as sys;

static EVENT_LOOP: OnceLock<()> = OnceLock::new();

/// Registers the default event implementation and starts the thread that drives it. Must run
/// before the first `Connect::open`; later calls do nothing.
pub fn ensure_event_loop() {
    EVENT_LOOP.get_or_init(|| {
        // libvirt would otherwise print every error to stderr; we log them ourselves.
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "libvirt event loop registration failed");
            return;
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                if let Err(e) = virt::event::event_run_default_impl() {
                    tracing::warn!(error = %e, "libvirt event loop iteration failed");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .expect("spawn the libvirt event thread");
    });
}

/// A domain lifecycle event as libvirt reported it.
#[derive(Debug, Clone, Copy)]
pub struct DomainEvent {
    pub host: Uuid,
    pub uuid: Uuid,
    pub event: i32,
    pub detail: i32,
    pub at: Instant,
    /// Wall-clock time of the callback, to order the event against reads of the domain.
    pub seen: time::OffsetDateTime,
}

struct LifecycleCtx {
    host: Uuid,
    tx: UnboundedSender<DomainEvent>,
}

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let ctx = &*(opaque as *const LifecycleCtx);
    let mut raw = [0u8; sys::VIR_UUID_BUFLEN as usize];
    if sys::virDomainGetUUID(dom, raw.as_mut_ptr()) == 0 {
        let _ = ctx.tx.send(DomainEvent {
            host: ctx.host,
            uuid: Uuid::from_bytes(raw),
            event,
            detail,
            at: Instant::now(),
            seen: time::OffsetDateTime::now_utc(),
        });
    }
    0
}

unsafe extern "C" fn free_box<T>(opaque: *mut c_void) {
    drop(Box::from_raw(opaque as *mut T));
}

/// Subscribes to lifecycle events of every domain on `conn`; returns the callback id.
pub fn subscribe_lifecycle(
    conn: &Connect,
    host: Uuid,
    tx: UnboundedSender<DomainEvent>,
) -> Result<c_int, virt::error::Error> {
    let opaque = Box::into_raw(Box::new(LifecycleCtx { host, tx })) as *mut c_void;
    // SAFETY: libvirt calls the lifecycle callback with the lifecycle signature; the generic
    // type is only how the C API declares the parameter.
    let cb: sys::virConnectDomainEventGenericCallback = unsafe {
        Some(std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
        >(lifecycle_cb))
    };
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            cb,
            opaque,
            Some(free_box::<LifecycleCtx>),
        )
    };
    if id < 0 {
        // libvirt did not take ownership of the context.
        unsafe { free_box::<LifecycleCtx>(opaque) };
        return Err(virt::error::Error::last_error());
    }
    Ok(id)
}

pub fn unsubscribe_lifecycle(conn: &Connect, id: c_int) {
    unsafe {
        sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id);
    }
}

type CloseFn = Box<dyn Fn(i32) + Send>;

unsafe extern "C" fn close_cb(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    let f = &*(opaque as *const CloseFn);
    f(reason);
}

/// Calls `f` (with libvirt's reason code) when the connection closes under us.
pub fn on_close(
    conn: &Connect,
    f: impl Fn(i32) + Send + 'static,
) -> Result<(), virt::error::Error> {
    let boxed: Box<CloseFn> = Box::new(Box::new(f));
    let opaque = Box::into_raw(boxed) as *mut c_void;
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_cb),
            opaque,
            Some(free_box::<CloseFn>),
        )
    };
    if rc < 0 {
        unsafe { free_box::<CloseFn>(opaque) };
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

pub fn remove_on_close(conn: &Connect) {
    unsafe {
        sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(close_cb));
    }
}

/// Closes a connection without the crate's panic-on-failure drop: a connection to a dead
/// daemon may fail to close, and that must not take the process down.
pub fn close(conn: Connect) {
    let ptr = unsafe { conn.as_ptr() };
    std::mem::forget(conn);
    let rc = unsafe { sys::virConnectClose(ptr) };
    if rc < 0 {
        tracing::debug!("closing a libvirt connection failed (already gone)");
    }
}

/// The state a lifecycle event leaves the domain in, if it says so directly.
pub fn state_after(event: i32) -> Option<&'static str> {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_STARTED | sys::VIR_DOMAIN_EVENT_RESUMED => Some("running"),
        sys::VIR_DOMAIN_EVENT_SUSPENDED => Some("paused"),
        sys::VIR_DOMAIN_EVENT_STOPPED => Some("shutoff"),
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => Some("shutdown"),
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Some("pmsuspended"),
        sys::VIR_DOMAIN_EVENT_CRASHED => Some("crashed"),
        _ => None,
    }
}

pub fn event_name(event: i32) -> &'static str {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => "defined",
        sys::VIR_DOMAIN_EVENT_UNDEFINED => "undefined",
        sys::VIR_DOMAIN_EVENT_STARTED => "started",
        sys::VIR_DOMAIN_EVENT_SUSPENDED => "suspended",
        sys::VIR_DOMAIN_EVENT_RESUMED => "resumed",
        sys::VIR_DOMAIN_EVENT_STOPPED => "stopped",
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => "shutdown",
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => "pmsuspended",
        sys::VIR_DOMAIN_EVENT_CRASHED => "crashed",
        _ => "unknown",
    }
}
