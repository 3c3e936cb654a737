//! Sign-in, session lifetime, throttling and cross-site protection.

use crate::common::*;
use app::account::Actor;
use std::time::Instant;
use time::Duration;

/// The `user_sessions` row this client's cookie points at.
async fn session_of(c: &Client) -> String {
    let actor: Option<Actor> = c.call_as("current_actor", &[]).await.unwrap();
    actor.map(|a| a.session_id.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn login_rotates_the_session_and_logout_ends_it() {
    let app = spawn_app().await;
    app.user("ann@example.com", None).await;
    app.user("bob@example.com", None).await;
    let c = app.client();
    let res = c
        .http
        .post(format!("{}/api/login", c.base))
        .header("Origin", ORIGIN)
        .form(&[("email", "ann@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let first_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(first_cookie.contains("HttpOnly"), "{first_cookie}");
    assert!(first_cookie.contains("SameSite=Lax"), "{first_cookie}");
    assert!(
        !first_cookie.contains("Secure"),
        "plain http must not set Secure: {first_cookie}"
    );
    let first_session = session_of(&c).await;

    // Signing in again in the same browser (as someone else) issues a new cookie value.
    let res = c
        .http
        .post(format!("{}/api/login", c.base))
        .header("Origin", ORIGIN)
        .form(&[("email", "bob@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let second_cookie = res.headers()["set-cookie"].to_str().unwrap().to_string();
    let value = |c: &str| c.split(';').next().unwrap().to_string();
    assert_ne!(
        value(&first_cookie),
        value(&second_cookie),
        "session id must rotate at login"
    );
    assert_eq!(c.whoami().await.as_deref(), Some("bob@example.com"));
    assert_ne!(first_session, session_of(&c).await);

    // Replaying the first cookie gives nothing: it was cycled away.
    let replay = reqwest::Client::new()
        .post(format!("{}/api/current_actor", app.base))
        .header("Origin", ORIGIN)
        .header("Cookie", value(&first_cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.text().await.unwrap(), "null");

    c.call("logout", &[]).await.unwrap();
    assert_eq!(c.whoami().await, None);
    let replay = reqwest::Client::new()
        .post(format!("{}/api/current_actor", app.base))
        .header("Origin", ORIGIN)
        .header("Cookie", value(&second_cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.text().await.unwrap(), "null");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM user_sessions").await,
        0
    );
    let actions = app.audit_actions().await;
    assert!(
        actions.iter().filter(|a| *a == "session.login").count() == 2,
        "{actions:?}"
    );
    assert!(actions.contains(&"session.logout".to_string()));
}

#[tokio::test]
async fn secure_host_cookie_over_tls() {
    let app = spawn_app_with(|c| c.public_url = "https://concierge.example".into()).await;
    app.user("ann@example.com", None).await;
    let res = reqwest::Client::new()
        .post(format!("{}/api/login", app.base))
        .header("Origin", "https://concierge.example")
        .form(&[("email", "ann@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("__Host-concierge="), "{cookie}");
    assert!(
        cookie.contains("Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"),
        "{cookie}"
    );
}

#[tokio::test]
async fn idle_timeout_ends_sessions_but_activity_keeps_them() {
    let app = spawn_app().await;
    let (_, c) = app.signed_in("ann@example.com", None).await;
    app.clock.advance(Duration::minutes(29));
    assert!(c.whoami().await.is_some(), "29 idle minutes are fine");
    app.clock.advance(Duration::minutes(29));
    assert!(
        c.whoami().await.is_some(),
        "activity at minute 29 reset the idle timer"
    );
    app.clock.advance(Duration::minutes(31));
    assert_eq!(c.whoami().await, None, "31 idle minutes end the session");
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM user_sessions").await,
        0
    );
}

#[tokio::test]
async fn absolute_timeout_ends_even_busy_sessions() {
    let app = spawn_app().await;
    let (_, c) = app.signed_in("ann@example.com", None).await;
    for _ in 0..(11 * 3) {
        app.clock.advance(Duration::minutes(20));
        assert!(c.whoami().await.is_some());
    }
    app.clock.advance(Duration::minutes(61));
    assert!(
        c.whoami().await.is_none(),
        "12 h after sign-in the session is over"
    );
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_blocks_sign_in() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let (id, c) = app.signed_in("ann@example.com", None).await;
    let other_device = app.client();
    other_device
        .login("ann@example.com", PASSWORD)
        .await
        .unwrap();
    admin
        .call(
            "set_user_disabled",
            &[("user_id", &id.to_string()), ("disabled", "true")],
        )
        .await
        .unwrap();
    assert_eq!(c.whoami().await, None);
    assert_eq!(other_device.whoami().await, None);
    let r = app.client().login("ann@example.com", PASSWORD).await;
    assert!(
        matches!(r, Err((401, app::error::AppError::LoginFailed))),
        "{r:?}"
    );
}

/// Outside testing: removing a member from one tenant signed them out everywhere, so any
/// tenant admin could sign out an account of another tenant. Now it ends that tenant's access
/// at once and nothing else.
#[tokio::test]
async fn removing_a_membership_ends_that_tenants_access_only() {
    let app = spawn_app().await;
    let t = app.tenant("Acme").await;
    let other = app.tenant("Other").await;
    let (_, tadmin) = app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    let (id, member) = app
        .signed_in("ann@example.com", Some((t, "requester")))
        .await;
    sqlx::query("INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'manager')")
        .bind(other)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    app.state.accounts.cache.invalidate_all();
    let tenants_of = |actor: Option<Actor>| -> Vec<String> {
        actor
            .expect("signed in")
            .memberships
            .into_iter()
            .map(|m| m.tenant_name)
            .collect()
    };
    let before = member.call_as("current_actor", &[]).await.unwrap();
    assert_eq!(tenants_of(before), ["Acme", "Other"]);
    tadmin
        .call(
            "remove_member",
            &[("tenant_id", &t.to_string()), ("user_id", &id.to_string())],
        )
        .await
        .unwrap();
    assert_eq!(member.whoami().await.as_deref(), Some("ann@example.com"));
    let after = member.call_as("current_actor", &[]).await.unwrap();
    assert_eq!(tenants_of(after), ["Other"]);
    assert_refused(
        &member
            .call("catalog", &[("tenant_id", &t.to_string())])
            .await,
        "the catalog of the tenant one was removed from",
    );
    let audit: (Option<String>, Option<uuid::Uuid>, Option<String>) = sqlx::query_as(
        "SELECT actor_email, tenant_id, host(client_addr) FROM audit_log WHERE action = 'member.remove'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        audit,
        (
            Some("boss@example.com".into()),
            Some(t),
            Some("127.0.0.1".into())
        )
    );
}

#[tokio::test]
async fn password_change_rotates_the_session_and_signs_out_other_devices() {
    let app = spawn_app().await;
    let (_, c) = app.signed_in("ann@example.com", None).await;
    let other = app.client();
    other.login("ann@example.com", PASSWORD).await.unwrap();
    let before = session_of(&c).await;
    let r = c
        .call(
            "change_password",
            &[
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
                ("confirm_password", "a brand new passphrase"),
            ],
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(c.whoami().await.as_deref(), Some("ann@example.com"));
    assert_eq!(
        session_of(&c).await,
        before,
        "the session row stays; its cookie id rotates"
    );
    assert_eq!(other.whoami().await, None, "other devices are signed out");
    assert!(app
        .client()
        .login("ann@example.com", PASSWORD)
        .await
        .is_err());
    assert!(app
        .client()
        .login("ann@example.com", "a brand new passphrase")
        .await
        .is_ok());
}

#[tokio::test]
async fn first_sign_in_must_replace_the_one_time_password() {
    let app = spawn_app().await;
    let admin = app.client();
    admin
        .login("admin@concierge.local", ADMIN_PASSWORD)
        .await
        .unwrap();
    let r = admin.call("list_tenants", &[]).await;
    assert!(
        matches!(r, Err((403, app::error::AppError::PasswordChangeRequired))),
        "{r:?}"
    );
    assert_eq!(
        admin.get("/tenants").await.headers()["location"],
        "/password"
    );
    let weak = admin
        .call(
            "change_password",
            &[
                ("current_password", ADMIN_PASSWORD),
                ("new_password", "password123"),
                ("confirm_password", "password123"),
            ],
        )
        .await;
    assert!(assert_field_error(&weak, "new_password").contains("common"));
    let mismatch = admin
        .call(
            "change_password",
            &[
                ("current_password", ADMIN_PASSWORD),
                ("new_password", "fleet admin passphrase"),
                ("confirm_password", "fleet admin passphrase!"),
            ],
        )
        .await;
    assert_field_error(&mismatch, "confirm_password");
    let wrong = admin
        .call(
            "change_password",
            &[
                ("current_password", "nope-nope-nope"),
                ("new_password", "fleet admin passphrase"),
                ("confirm_password", "fleet admin passphrase"),
            ],
        )
        .await;
    assert_field_error(&wrong, "current_password");
    admin
        .call(
            "change_password",
            &[
                ("current_password", ADMIN_PASSWORD),
                ("new_password", "fleet admin passphrase"),
                ("confirm_password", "fleet admin passphrase"),
            ],
        )
        .await
        .unwrap();
    assert!(admin.call("list_tenants", &[]).await.is_ok());
}

/// Outside testing: 100 wrong passwords from anywhere locked the real user out for an hour.
/// Now refusals are per (account, address); the account alone is slowed down, never refused.
#[tokio::test]
async fn failed_sign_ins_refuse_the_guessing_address_and_only_slow_the_account() {
    let app = spawn_app_with(|c| {
        c.login_failures_per_account_address = 3;
        c.login_failures_per_account = 2;
        c.login_max_delay_ms = 300;
    })
    .await;
    app.user("ann@example.com", None).await;
    let attacker = app.client();
    for i in 0..3 {
        let r = attacker.login("ann@example.com", "wrong password!").await;
        match (i, &r) {
            (0 | 1, Err((401, app::error::AppError::LoginFailed))) => {}
            (2, Err((401, app::error::AppError::LoginSlowed))) => {}
            _ => panic!("attempt {i}: {r:?}"),
        }
    }
    // The guessing address is refused for this account, even with the right password, and
    // told why.
    let r = attacker.login("ANN@example.com", PASSWORD).await;
    match &r {
        Err((429, app::error::AppError::TooManyRequests(m))) => {
            assert!(m.contains("this account from your network"), "{m}")
        }
        other => panic!("refused: {other:?}"),
    }
    // The real user, from another address, still gets in: slowed down, not refused.
    let started = Instant::now();
    let ann = app.client_from("127.0.0.2");
    ann.login("ann@example.com", PASSWORD)
        .await
        .expect("the real user signs in from elsewhere");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "slowed down: {:?}",
        started.elapsed()
    );
    assert_eq!(ann.whoami().await.as_deref(), Some("ann@example.com"));
    // Other accounts from the guessing address are unaffected.
    app.user("bob@example.com", None).await;
    assert!(attacker.login("bob@example.com", PASSWORD).await.is_ok());
    // Failures and the refusal are in the audit trail (the account as typed).
    let actions = app.audit_actions().await;
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "session.login_failed")
            .count(),
        3
    );
    assert!(actions.contains(&"session.login_refused".to_string()));
    // The refusal lifts as the hour rolls on.
    app.clock.advance(Duration::minutes(61));
    let again = app.client();
    assert!(again.login("ann@example.com", PASSWORD).await.is_ok());
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let app = spawn_app_with(|c| c.login_failures_per_address = 4).await;
    app.user("ann@example.com", None).await;
    for i in 0..4 {
        let _ = app
            .client()
            .login(&format!("nobody{i}@example.com"), "whatever-password")
            .await;
    }
    let r = app.client().login("ann@example.com", PASSWORD).await;
    assert!(matches!(r, Err((429, _))), "{r:?}");
}

#[tokio::test]
async fn unknown_accounts_cost_as_much_as_wrong_passwords() {
    let app = spawn_app().await;
    app.user("ann@example.com", None).await;
    let c = app.client();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let a = c.login("ann@example.com", "wrong password!").await;
        known.push(t.elapsed());
        let t = Instant::now();
        let b = c
            .login(&format!("ghost{i}@example.com"), "wrong password!")
            .await;
        unknown.push(t.elapsed());
        // Same answer either way.
        assert_eq!(a.unwrap_err(), b.unwrap_err());
    }
    known.sort();
    unknown.sort();
    // Without the dummy verification an unknown account answers ~50x faster.
    assert!(
        unknown[2] * 3 > known[2],
        "unknown {unknown:?} vs known {known:?}"
    );
}

#[tokio::test]
async fn cross_site_posts_are_refused_and_same_site_ones_accepted() {
    let app = spawn_app().await;
    app.user("ann@example.com", None).await;
    let http = reqwest::Client::new();
    let post = |headers: Vec<(&'static str, &'static str)>| {
        let mut req = http
            .post(format!("{}/api/login", app.base))
            .form(&[("email", "ann@example.com"), ("password", PASSWORD)]);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    for (headers, want) in [
        (vec![("Sec-Fetch-Site", "cross-site")], 403),
        (vec![("Sec-Fetch-Site", "same-site")], 403),
        (
            vec![("Sec-Fetch-Site", "cross-site"), ("Origin", ORIGIN)],
            403,
        ),
        (vec![("Origin", "http://evil.example")], 403),
        (vec![("Origin", "null")], 403),
        (vec![], 403),
        (vec![("Sec-Fetch-Site", "same-origin")], 200),
        (vec![("Sec-Fetch-Site", "none")], 200),
        (vec![("Origin", ORIGIN)], 200),
    ] {
        let res = post(headers.clone()).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{headers:?}");
    }
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM user_sessions").await,
        3
    );
    // GET never changes state and is never refused for lack of headers.
    assert_eq!(
        http.get(format!("{}/login", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn pages_carry_security_headers() {
    let app = spawn_app().await;
    let res = app.client().get("/login").await;
    let h = res.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "'nonce-",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "same-origin");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let body = res.text().await.unwrap();
    assert!(
        body.contains(&format!("nonce=\"{nonce}\"")),
        "scripts carry the header's nonce"
    );
}

/// Outside testing: `/login?__path=…&__err=…` showed attacker-chosen text as a form error.
/// Only an error this browser was just sent by the server is shown, once.
#[tokio::test]
async fn form_errors_in_the_address_show_only_when_the_server_sent_them_to_this_browser() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let forged = base64::engine::general_purpose::URL_SAFE
        .encode(r#"{"Conflict":"Your account is blocked: call +1 555 0100"}"#);
    let visitor = app.client();
    let res = visitor
        .get(&format!("/login?__path=/api/login&__err={forged}"))
        .await;
    assert_eq!(res.status().as_u16(), 303);
    assert_eq!(res.headers()["location"], "/login");

    // The real thing: a sign-in form posted without JavaScript.
    let res = visitor
        .http
        .post(format!("{}/api/login", app.base))
        .header("Accept", "text/html")
        .header("Origin", ORIGIN)
        .header("Referer", format!("{}/login", app.base))
        .form(&[
            ("email", "nobody@example.com"),
            ("password", "wrong password!"),
        ])
        .send()
        .await
        .unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("__err="), "{location}");
    let path = location.trim_start_matches(&app.base).to_string();
    let page = visitor.get(&path).await;
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("E-mail or password is incorrect."),
        "shown once"
    );
    // Once: the same address again (a forwarded link, a reload) is cleaned.
    let again = visitor.get(&path).await;
    assert_eq!(again.status().as_u16(), 303);
    // Another browser with the genuine link sees nothing either.
    let other = app.client().get(&path).await;
    assert_eq!(other.status().as_u16(), 303);
}

/// Outside testing: a `/live` stream opened before sign-out kept receiving events.
#[tokio::test]
async fn a_live_stream_ends_with_its_session() {
    use futures::StreamExt as _;
    let app = spawn_app().await;
    let t = app.tenant("Acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((t, "tenant_admin")))
        .await;
    let res = ann.get("/live").await;
    assert_eq!(res.status().as_u16(), 200);
    let mut stream = res.bytes_stream();
    // Signed out from another tab of the same browser.
    let tab = ann.clone();
    tab.call("logout", &[]).await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the session");
}

/// A request or VM that does not exist (or not for this viewer) is the not-found page with
/// HTTP 404, not a bare line with 200.
#[tokio::test]
async fn missing_requests_and_vms_answer_404() {
    let app = spawn_app().await;
    let t = app.tenant("Acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((t, "requester")))
        .await;
    let nobody = uuid::Uuid::new_v4();
    for path in [
        format!("/requests/{nobody}"),
        format!("/vms/{nobody}/{nobody}"),
    ] {
        let res = ann.get(&path).await;
        assert_eq!(res.status().as_u16(), 404, "{path}");
        assert!(
            res.text().await.unwrap().contains("Page not found"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_page_stuck_on_a_lock_answers_in_time_and_the_next_one_renders() {
    let app = spawn_app_with(|c| c.page_timeout_seconds = 2).await;
    let admin = app.fleet_admin().await;
    assert_eq!(admin.get("/tenants").await.status(), 200);
    // Something holds the tenants table (a long migration, a stuck transaction).
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenants IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = Instant::now();
    let res = admin.get("/tenants").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "answered after {:?}",
        started.elapsed()
    );
    lock.rollback().await.unwrap();
    let res = admin.get("/tenants").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("Tenants"));
}

#[tokio::test]
async fn pages_are_compressed_for_browsers_that_take_it() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let fetch = |encoding: &'static str| {
        let admin = admin.clone();
        async move {
            let res = admin
                .http
                .get(format!("{}/tenants", admin.base))
                .header("Accept", "text/html")
                .header("Accept-Encoding", encoding)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let coding = res
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            (coding, res.bytes().await.unwrap().len())
        }
    };
    let (plain_coding, plain) = fetch("identity").await;
    assert_eq!(plain_coding, None);
    for encoding in ["br", "gzip"] {
        let (coding, size) = fetch(encoding).await;
        assert_eq!(coding.as_deref(), Some(encoding));
        assert!(size * 2 < plain, "{encoding}: {size} bytes of {plain}");
    }
}

/// Starting a server generates the app's route list, which once parked every page resource
/// first polled meanwhile in any other server of the process (leptos #4773): a test's page
/// hung now and then while another test started its server.
#[tokio::test]
async fn pages_render_while_other_servers_start_in_the_same_process() {
    let app = spawn_app_with(|c| c.page_timeout_seconds = 5).await;
    let admin = app.fleet_admin().await;
    // Other tests start their servers on their own threads, as libtest runs them.
    let starters: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for _ in 0..5 {
                    rt.block_on(spawn_app());
                }
            })
        })
        .collect();
    while starters.iter().any(|t| !t.is_finished()) {
        let (a, b, c) = tokio::join!(
            admin.get("/tenants"),
            admin.get("/users"),
            admin.get("/templates")
        );
        for res in [a, b, c] {
            assert_eq!(
                res.status(),
                200,
                "a page hung while another server started"
            );
        }
    }
    for t in starters {
        t.join().unwrap();
    }
}
