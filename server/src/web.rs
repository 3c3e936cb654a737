//! HTTP wiring: the Leptos app and server functions behind sessions, authentication,
//! same-origin checks and security headers.
use crate::accounts::sessions::{self, Timeouts};
use crate::state::AppState;
use app::seam::{CspNonce, RequestCtx};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use rand::RngCore as _;
use std::net::SocketAddr;
use tower_http::services::ServeDir;
use tower_sessions::cookie::SameSite;
use tower_sessions::CachingSessionStore;
use tower_sessions::{Expiry, SessionManagerLayer};
use tower_sessions_moka_store::MokaStore;
use tower_sessions_sqlx_store::PostgresStore;

pub fn router(state: AppState) -> Router {
    let options = state.leptos.clone();
    let routes = routes();
    let backend = state.backend.clone();

    // Sessions are read on every request: keep them in memory, written through to PostgreSQL.
    let store = CachingSessionStore::new(
        MokaStore::new(Some(100_000)),
        PostgresStore::new(state.pool.clone()),
    );
    let idle = tower_sessions::cookie::time::Duration::minutes(state.config.session_idle_minutes);
    let secure = state.config.tls();
    // `__Host-` pins the cookie to this host and path, but browsers only accept it with Secure.
    let cookie_name = if secure {
        "__Host-concierge"
    } else {
        "concierge"
    };
    let sessions = SessionManagerLayer::new(store)
        .with_name(cookie_name)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(secure)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(idle));

    let site_root = state.config.site_root.clone();
    let reports = state.backend.reports.clone();
    let provisioning = state.backend.provisioning.clone();
    let live_state = state.clone();
    let console_state = state.clone();
    let app_routes = Router::new()
        .route(
            "/console/ws",
            axum::routing::get(
                move |ws: axum::extract::ws::WebSocketUpgrade,
                      headers: axum::http::HeaderMap,
                      axum::extract::Query(q): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >,
                      axum::Extension(ctx): axum::Extension<RequestCtx>| {
                    let state = console_state.clone();
                    async move {
                        let actor = ctx.actor().ok().cloned();
                        let proxy = crate::fleet::consoles::Proxy {
                            pool: state.pool.clone(),
                            public_origin: state.public_origin.clone(),
                            clock: state.clock.clone(),
                            session: recheck_session(
                                state.clone(),
                                actor.as_ref().map(|a| a.session_id).unwrap_or_default(),
                            ),
                        };
                        let origin = headers
                            .get(header::ORIGIN)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        crate::fleet::consoles::upgrade(
                            proxy,
                            ws,
                            origin,
                            actor,
                            q.get("ticket").cloned(),
                        )
                        .await
                    }
                },
            ),
        )
        .route(
            "/live",
            axum::routing::get(move |req: Request| {
                let state = live_state.clone();
                async move {
                    match req
                        .extensions()
                        .get::<RequestCtx>()
                        .map(|c| c.actor().cloned())
                    {
                        Some(Ok(actor)) => {
                            let recheck = recheck_session(state.clone(), actor.session_id);
                            crate::platform::live::stream(&state.live, actor, recheck)
                                .into_response()
                        }
                        Some(Err(e)) => e.status().into_response(),
                        None => StatusCode::UNAUTHORIZED.into_response(),
                    }
                }
            }),
        )
        .route(
            "/sparklines/cpu/{uuid}",
            axum::routing::get(
                move |axum::extract::Path(uuid): axum::extract::Path<uuid::Uuid>, req: Request| {
                    let provisioning = provisioning.clone();
                    async move {
                        let Some(ctx) = req.extensions().get::<RequestCtx>().cloned() else {
                            return StatusCode::UNAUTHORIZED.into_response();
                        };
                        match provisioning.cpu_sparkline(&ctx, uuid).await {
                            Ok(svg) => (
                                [
                                    (header::CONTENT_TYPE, "image/svg+xml"),
                                    // Private: it is one viewer's authorized data.
                                    (header::CACHE_CONTROL, "private, max-age=60"),
                                ],
                                svg,
                            )
                                .into_response(),
                            Err(e) => e.status().into_response(),
                        }
                    }
                },
            ),
        )
        .route(
            "/images/{image}/{host}/upload",
            axum::routing::put(upload_chunk)
                // A chunk and a little more; the backend refuses larger ones by name.
                .layer(axum::extract::DefaultBodyLimit::max(
                    app::images::UPLOAD_CHUNK_BYTES as usize + 4096,
                ))
                .with_state(state.backend.images.clone()),
        )
        .route(
            "/audit/export.jsonl",
            axum::routing::get(audit_export).with_state(state.audit.clone()),
        )
        .route(
            "/audit/export.csv",
            axum::routing::get(audit_export).with_state(state.audit.clone()),
        )
        .route(
            "/audit/checkpoints.json",
            axum::routing::get(audit_checkpoints).with_state(state.audit.clone()),
        )
        .route(
            "/reports/usage.csv",
            axum::routing::get(
                move |axum::extract::Query(q): axum::extract::Query<app::reports::ReportQuery>,
                      req: Request| export_csv(reports.clone(), q, req),
            ),
        )
        .leptos_routes_with_context(
            &options,
            routes,
            move || provide_context(backend.clone()),
            {
                let options = options.clone();
                move || app::shell(options.clone())
            },
        )
        .fallback(leptos_axum::file_and_error_handler(app::shell))
        .with_state(options)
        .layer(middleware::from_fn(run_to_completion))
        // Pages and server-function answers (event streams are left alone by its predicate).
        // Quality 4, not the libraries' default: brotli's default is its best, 11, which took
        // about 55 ms of CPU for a 30 KB page here against under 2 ms at 4 (9.8 KB against
        // 8.7 KB); the static bundle is compressed at build time at full quality instead.
        .layer(
            tower_http::compression::CompressionLayer::new()
                .quality(tower_http::CompressionLevel::Precise(PAGE_COMPRESSION)),
        )
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(sessions)
        // Outside the session and sign-in layers: a lock there would hang a page as well.
        .layer(middleware::from_fn_with_state(
            (
                std::time::Duration::from_secs(state.config.page_timeout_seconds),
                state.pool.clone(),
            ),
            deadline,
        ))
        .layer(middleware::from_fn_with_state(secure, flash_errors));

    Router::new()
        .nest_service("/pkg", bundle(&site_root))
        .route(
            "/healthz",
            axum::routing::get(health).with_state(state.clone()),
        )
        .route_service(
            "/favicon.svg",
            tower_http::services::ServeFile::new(format!("{site_root}/favicon.svg")),
        )
        .merge(app_routes)
        .layer(middleware::from_fn(malformed_calls))
        .layer(middleware::from_fn_with_state(state.clone(), same_origin))
        .layer(middleware::from_fn(security_headers))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// For load balancers and operators: this process is up and which replicas share its
/// database (no addresses: the fleet dashboard shows those to fleet admins). 503 when the
/// database does not answer, or while this replica drains before it stops.
async fn health(State(state): State<AppState>) -> Response {
    let unavailable = |status: &str| {
        let body = serde_json::json!({ "status": status, "replica": state.replica.id });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return unavailable("draining");
    }
    let read = async {
        let mut tx =
            crate::platform::db::begin(&state.pool, crate::platform::db::Scope::fleet()).await?;
        let replicas = crate::platform::cluster::replicas(&mut tx, state.replica.id).await?;
        tx.commit().await?;
        Ok::<_, crate::platform::error::Error>(replicas)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), read).await {
        Ok(Ok(replicas)) => {
            let replicas: Vec<_> = replicas
                .into_iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id, "version": r.version, "alive": r.alive, "this": r.this, "hosts": r.hosts,
                        "started_at": r.started_at.unix_timestamp(),
                        "heartbeat_at": r.heartbeat_at.unix_timestamp(),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({
                "status": "ok",
                "replica": state.replica.id,
                "version": env!("CARGO_PKG_VERSION"),
                "replicas": replicas,
            }))
            .into_response()
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "the database did not answer within 5 s".into(),
            };
            tracing::warn!(error = %why, "health check");
            unavailable("unavailable")
        }
    }
}

/// The app's routes, generated once per process. Generating them sets a process-wide flag
/// under which every Leptos resource first polled meanwhile, in any server of the process,
/// waits forever (leptos issue #4773): a second server started in the same process (the
/// integration tests start one per test) hung pages of the others now and then.
fn routes() -> Vec<leptos_axum::AxumRouteListing> {
    static ROUTES: std::sync::OnceLock<Vec<leptos_axum::AxumRouteListing>> =
        std::sync::OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(app::App)).clone()
}

/// Changes (anything but GET and HEAD) run to the end in their own task. A browser that
/// navigates away closes the connection and hyper drops the request's future: a VM action cut
/// between libvirt and the database would leave its operation "running" and a deleted VM's disk
/// and quota behind.
async fn run_to_completion(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Brotli and gzip level for pages as they are rendered (see the compression layer).
pub const PAGE_COMPRESSION: i32 = 4;

/// Reads (GET, HEAD) answer within the page deadline or get 503 and a log line naming the
/// path: a render waiting on something that never comes must not hold the browser (or a
/// test) forever. Only the time to the response head is bounded: streams then run on.
async fn deadline(
    State((limit, pool)): State<(std::time::Duration, sqlx::PgPool)>,
    req: Request,
    next: Next,
) -> Response {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            // The pool's state tells a page waiting for a connection from one waiting on a lock.
            tracing::error!(
                path,
                seconds = limit.as_secs(),
                pool_size = pool.size(),
                pool_idle = pool.num_idle(),
                "page deadline passed"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "This page took too long to prepare. Please try again in a moment.",
            )
                .into_response()
        }
    }
}

/// The browser bundle: brotli or gzip files made at build time when the browser takes them,
/// and, for the content-named files, a year in the browser's cache with no revalidation
/// (a new build has new names). Anything else there is revalidated on every use.
fn bundle(site_root: &str) -> Router {
    let files = ServeDir::new(format!("{site_root}/pkg"))
        .precompressed_br()
        .precompressed_gzip();
    Router::new()
        .fallback_service(files)
        .layer(middleware::from_fn(cache_bundle))
}

async fn cache_bundle(req: Request, next: Next) -> Response {
    let named_by_content = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .is_some_and(|file| file.starts_with("concierge-"));
    let mut res = next.run(req).await;
    if res.status().is_success() {
        let policy = if named_by_content {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    }
    res
}

/// `PUT /images/{image}/{host}/upload?offset=N`: one chunk of a browser upload (same-origin
/// like every mutating request; fleet admins only). Answers the bytes stored so far, or the
/// error as JSON with its status (a 409 says where the upload stands).
async fn upload_chunk(
    State(images): State<std::sync::Arc<dyn app::seam::Images>>,
    axum::extract::Path((image, host)): axum::extract::Path<(uuid::Uuid, uuid::Uuid)>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    axum::Extension(ctx): axum::Extension<RequestCtx>,
    body: axum::body::Bytes,
) -> Response {
    let Some(offset) = q.get("offset").and_then(|o| o.parse::<i64>().ok()) else {
        let e = app::error::AppError::field("offset", "Say where the chunk starts (offset=N).");
        return (e.status(), axum::Json(e)).into_response();
    };
    match images
        .upload_chunk(&ctx, image, host, offset, body.to_vec())
        .await
    {
        Ok(done) => axum::Json(serde_json::json!({ "bytes_done": done })).into_response(),
        Err(e) => (e.status(), axum::Json(e)).into_response(),
    }
}

/// The usage report as a CSV download (same query and authorization as the report page).
async fn export_csv(
    reports: std::sync::Arc<dyn app::seam::Reports>,
    query: app::reports::ReportQuery,
    req: Request,
) -> Response {
    let Some(ctx) = req.extensions().get::<RequestCtx>().cloned() else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match reports.report(&ctx, query).await {
        Ok(r) => {
            let name = format!("concierge-usage-{}-{}-by-{}.csv", r.from, r.to, r.group_by);
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                crate::metering::reports::to_csv(&r),
            )
                .into_response()
        }
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct AuditExportQuery {
    #[serde(default, deserialize_with = "empty_is_none")]
    tenant: Option<uuid::Uuid>,
}

/// An empty `tenant=` (the page's "all" choice) means none.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<uuid::Uuid>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// `GET /audit/export.jsonl` or `.csv`: the sealed rows with their hashes, for verifying
/// offline (`concierge audit verify --file`).
async fn audit_export(
    State(audit): State<std::sync::Arc<crate::platform::audit::AuditBackend>>,
    axum::extract::Query(q): axum::extract::Query<AuditExportQuery>,
    axum::Extension(ctx): axum::Extension<RequestCtx>,
    uri: axum::http::Uri,
) -> Response {
    let csv = uri.path().ends_with(".csv");
    match audit.export(&ctx, q.tenant, csv).await {
        Ok(stream) => {
            let (kind, ext) = if csv {
                ("text/csv; charset=utf-8", "csv")
            } else {
                ("application/jsonl; charset=utf-8", "jsonl")
            };
            (
                [
                    (header::CONTENT_TYPE, kind.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"concierge-audit.{ext}\""),
                    ),
                ],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

/// `GET /audit/checkpoints.json`: the signed checkpoints and the public key.
async fn audit_checkpoints(
    State(audit): State<std::sync::Arc<crate::platform::audit::AuditBackend>>,
    axum::extract::Query(q): axum::extract::Query<AuditExportQuery>,
    axum::Extension(ctx): axum::Extension<RequestCtx>,
) -> Response {
    match audit.export_checkpoints(&ctx, q.tenant).await {
        Ok(json) => (
            [(
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"concierge-audit-checkpoints.json\"",
            )],
            axum::Json(json),
        )
            .into_response(),
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

fn timeouts(state: &AppState) -> Timeouts {
    Timeouts {
        idle: time::Duration::minutes(state.config.session_idle_minutes),
        absolute: time::Duration::hours(state.config.session_absolute_hours),
    }
}

/// How a live stream re-reads its viewer's session (see `live::stream`). A database error
/// ends the stream too: the page reconnects and is authenticated afresh.
fn recheck_session(state: AppState, session_id: uuid::Uuid) -> crate::platform::live::Recheck {
    std::sync::Arc::new(move || {
        let state = state.clone();
        Box::pin(async move {
            sessions::current(
                &state.pool,
                &state.accounts.cache,
                session_id,
                state.clock.as_ref(),
                timeouts(&state),
            )
            .await
            .ok()
            .flatten()
        })
    })
}

/// Resolves the session to an actor and hands both to the app through request extensions.
async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(session) = req.extensions().get::<tower_sessions::Session>().cloned() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let actor = match sessions::resolve(
        &state.pool,
        &state.accounts.cache,
        &session,
        state.clock.as_ref(),
        timeouts(&state),
    )
    .await
    {
        Ok(actor) => actor,
        Err(e) => {
            tracing::warn!(error = %e, "could not resolve session");
            None
        }
    };
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    req.extensions_mut().insert(RequestCtx {
        session,
        actor,
        client_addr: Some(peer.ip()),
        user_agent,
    });
    next.run(req).await
}

const FLASH_COOKIE: &str = "concierge_flash";

/// The digest a flash cookie holds: of the function path and the error it was sent.
fn flash_digest(path: &str, err: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{path}\n{err}"));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// The `__path` and `__err` pairs Leptos puts in a URL for a form error shown without
/// JavaScript, and the query without them.
fn form_error(query: &str) -> (Option<String>, Option<String>, String) {
    let (mut path, mut err) = (None, None);
    let mut rest = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "__path" => path = Some(v.into_owned()),
            "__err" => err = Some(v.into_owned()),
            _ => {
                rest.append_pair(&k, &v);
            }
        }
    }
    (path, err, rest.finish())
}

/// Without JavaScript, a server function's error travels back in the redirect's URL
/// (`?__path=…&__err=…`) and the page shows it: anyone could craft a link that displays their
/// own text on our pages. So the redirect also sets a short-lived cookie holding a digest of
/// that error, and a page is shown with an error only when this browser holds the matching
/// cookie (once: the cookie is then cleared); otherwise it redirects to the address without it.
async fn flash_errors(State(secure): State<bool>, req: Request, next: Next) -> Response {
    let cookie_attrs = format!(
        "Path=/; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    );
    if req.uri().path().starts_with("/api/") {
        let mut res = next.run(req).await;
        let flash = res
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split_once('?'))
            .map(|(_, q)| form_error(q));
        if let Some((Some(path), Some(err), _)) = flash {
            let cookie = format!(
                "{FLASH_COOKIE}={}; Max-Age=120; {cookie_attrs}",
                flash_digest(&path, &err)
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().append(header::SET_COOKIE, v);
            }
        }
        return res;
    }
    let Some(query) = req.uri().query().filter(|q| q.contains("__err")) else {
        return next.run(req).await;
    };
    let (path, err, rest) = form_error(query);
    let (Some(path), Some(err)) = (path, err) else {
        return next.run(req).await;
    };
    let expected = format!("{FLASH_COOKIE}={}", flash_digest(&path, &err));
    let held = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim() == expected);
    if !held {
        let clean = if rest.is_empty() {
            req.uri().path().to_string()
        } else {
            format!("{}?{rest}", req.uri().path())
        };
        return axum::response::Redirect::to(&clean).into_response();
    }
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&format!("{FLASH_COOKIE}=; Max-Age=0; {cookie_attrs}")) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// Server-function calls whose arguments do not even decode are the caller's fault: the
/// framework answers 500, we answer 400 (the body, the error, stays as it is).
async fn malformed_calls(req: Request, next: Next) -> Response {
    let is_api = req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    if !is_api || res.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if bytes.starts_with(b"{\"Transport\"") {
        parts.status = StatusCode::BAD_REQUEST;
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Refuses state-changing requests that a browser marks as coming from another site.
async fn same_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let allowed = match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => site == "same-origin" || site == "none",
        None => headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| origin == state.public_origin),
    };
    if allowed {
        next.run(req).await
    } else {
        (StatusCode::FORBIDDEN, "Cross-site request refused.").into_response()
    }
}

/// CSP with a per-response nonce for Leptos' scripts, plus the usual hardening headers.
async fn security_headers(mut req: Request, next: Next) -> Response {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    let nonce = base64::engine::general_purpose::STANDARD.encode(bytes);
    req.extensions_mut().insert(CspNonce(nonce.clone()));
    let mut res = next.run(req).await;
    let csp = format!(
        "default-src 'self'; script-src 'self' 'nonce-{nonce}' 'wasm-unsafe-eval'; \
         style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    );
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt as _;

    /// A change whose caller goes away half-way still finishes; a read is simply dropped.
    #[tokio::test]
    async fn changes_finish_when_the_caller_goes_away() {
        for (method, finishes) in [(Method::POST, true), (Method::GET, false)] {
            let done = Arc::new(AtomicBool::new(false));
            let flag = done.clone();
            let app = Router::new()
                .route(
                    "/work",
                    axum::routing::any(move || {
                        let flag = flag.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            flag.store(true, Ordering::SeqCst);
                        }
                    }),
                )
                .layer(middleware::from_fn(run_to_completion));
            let req = Request::builder()
                .method(method.clone())
                .uri("/work")
                .body(axum::body::Body::empty())
                .unwrap();
            // The caller gives up after 20 ms: its future is dropped, as hyper drops it when the
            // browser closes the connection.
            let gave_up = tokio::time::timeout(Duration::from_millis(20), app.oneshot(req)).await;
            assert!(gave_up.is_err());
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(done.load(Ordering::SeqCst), finishes, "{method}");
        }
    }
}
