//! Two-factor sign-in (issue 19): setup with a QR code and first code, sign-in asking for the
//! code after the password, replayed and wrong codes refused (wrong ones throttled like
//! passwords), single-use recovery codes, the tenant's and fleet's requirement, audit rows.
use crate::common::*;
use app::two_factor::{Enrolment, RecoveryCodes, TwoFactorStatus};
use concierge::platform::clock::Clock;
use time::Duration;
use totp_rs::{Algorithm, Secret, TOTP};

/// The code an authenticator app with `enrolment`'s key shows at the server's time.
fn code_at(enrolment: &Enrolment, app: &TestApp) -> String {
    let secret = Secret::Encoded(enrolment.secret.replace(' ', ""))
        .to_bytes()
        .expect("base32 key");
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, secret, None, String::new());
    totp.generate(app.clock.now().unix_timestamp() as u64)
}

async fn enrol(app: &TestApp, c: &Client) -> (Enrolment, RecoveryCodes) {
    let e: Enrolment = c.call_as("start_two_factor", &[]).await.unwrap();
    let codes: RecoveryCodes = c
        .call_as("confirm_two_factor", &[("code", &code_at(&e, app))])
        .await
        .unwrap();
    (e, codes)
}

#[tokio::test]
async fn sign_in_asks_for_a_code_once_two_factor_is_on() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((acme, "requester")))
        .await;
    let status: TwoFactorStatus = ann.call_as("my_two_factor", &[]).await.unwrap();
    assert!(!status.enabled);

    // Setup: a QR code of an otpauth URI; a wrong first code is a field error and changes
    // nothing; the right one turns it on and answers ten recovery codes.
    let e: Enrolment = ann.call_as("start_two_factor", &[]).await.unwrap();
    assert!(
        e.qr_svg.starts_with("<?xml") && e.qr_svg.contains("<svg"),
        "{}",
        e.qr_svg
    );
    assert!(
        e.uri
            .starts_with("otpauth://totp/Concierge:ann%40example.com?secret="),
        "{}",
        e.uri
    );
    assert_field_error(
        &ann.call("confirm_two_factor", &[("code", "000000")]).await,
        "code",
    );
    let still: TwoFactorStatus = ann.call_as("my_two_factor", &[]).await.unwrap();
    assert!(!still.enabled);
    let first = code_at(&e, &app);
    let codes: RecoveryCodes = ann
        .call_as("confirm_two_factor", &[("code", &first)])
        .await
        .unwrap();
    assert_eq!(codes.codes.len(), 10);
    let on: TwoFactorStatus = ann.call_as("my_two_factor", &[]).await.unwrap();
    assert_eq!((on.enabled, on.recovery_codes_left), (true, 10));
    let secret: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT totp_secret FROM users WHERE email = 'ann@example.com'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(secret.map(|s| s.len()), Some(20));
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT code_hash FROM recovery_codes")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(
        stored.iter().all(|h| h.len() == 32),
        "recovery codes are stored hashed"
    );

    // Signing in: the password alone starts no session.
    let b = app.client();
    b.login("ann@example.com", PASSWORD).await.unwrap();
    assert_eq!(b.whoami().await, None, "no session before the code");
    // The code already used to turn it on is refused (a code signs in once).
    assert_field_error(&b.call("login_code", &[("code", &first)]).await, "code");
    assert_eq!(b.whoami().await, None);
    app.clock.advance(Duration::seconds(30));
    let now = code_at(&e, &app);
    b.call("login_code", &[("code", &now)]).await.unwrap();
    assert_eq!(b.whoami().await.as_deref(), Some("ann@example.com"));
    let how: serde_json::Value = sqlx::query_scalar(
        "SELECT after FROM audit_log WHERE action = 'session.login' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(how["second_factor"], "code");

    // The same code again, in another browser: refused (replay).
    let c = app.client();
    c.login("ann@example.com", PASSWORD).await.unwrap();
    assert_field_error(&c.call("login_code", &[("code", &now)]).await, "code");
    // A recovery code works once.
    let spare = codes.codes[3].to_uppercase();
    c.call("login_code", &[("code", &spare)]).await.unwrap();
    assert_eq!(c.whoami().await.as_deref(), Some("ann@example.com"));
    let d = app.client();
    d.login("ann@example.com", PASSWORD).await.unwrap();
    assert_field_error(&d.call("login_code", &[("code", &spare)]).await, "code");
    let left: TwoFactorStatus = ann.call_as("my_two_factor", &[]).await.unwrap();
    assert_eq!(left.recovery_codes_left, 9);

    // Without a password first there is nothing to give a code for.
    let e2 = app.client();
    assert_field_error(&e2.call("login_code", &[("code", "123456")]).await, "code");

    // Wrong codes count as failed sign-ins: after the per-address limit even a right code
    // from that address is refused for a while.
    let f = app.client();
    f.login("ann@example.com", PASSWORD).await.unwrap();
    let mut refused = None;
    for _ in 0..12 {
        match f.call("login_code", &[("code", "111111")]).await {
            Err((429, e)) => {
                refused = Some(e);
                break;
            }
            Err((422, _)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        matches!(refused, Some(app::error::AppError::TooManyRequests(_))),
        "{refused:?}"
    );
    app.clock.advance(Duration::seconds(30));
    assert!(matches!(
        f.call("login_code", &[("code", &code_at(&e, &app))]).await,
        Err((429, _))
    ));

    // Turning it off needs a current code; it is audited both ways.
    app.clock.advance(Duration::seconds(30));
    ann.call("disable_two_factor", &[("code", &code_at(&e, &app))])
        .await
        .unwrap();
    let actions = app.audit_actions().await;
    assert!(actions.contains(&"user.two_factor.enable".to_string()));
    assert!(actions.contains(&"user.two_factor.disable".to_string()));
    // (From another address: this one is still refused for the failures above.)
    let g = app.client_from("127.0.0.2");
    g.login("ann@example.com", PASSWORD).await.unwrap();
    assert_eq!(g.whoami().await.as_deref(), Some("ann@example.com"));
}

#[tokio::test]
async fn a_tenant_that_requires_a_second_factor_lets_its_members_do_nothing_else_until_set_up() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let (_, boss) = app
        .signed_in("boss@example.com", Some((acme, "tenant_admin")))
        .await;
    let (_, bob) = app
        .signed_in("bob@example.com", Some((acme, "requester")))
        .await;
    let other = app.tenant("globex").await;
    let (_, gail) = app
        .signed_in("gail@example.com", Some((other, "requester")))
        .await;
    let t = acme.to_string();

    // Only the tenant's admins (and fleet admins) set it; only fleet admins fleet-wide.
    assert_refused(
        &bob.call(
            "set_two_factor_policy",
            &[("tenant_id", &t), ("required", "on")],
        )
        .await,
        "a requester",
    );
    assert_refused(
        &boss
            .call("set_two_factor_policy", &[("required", "on")])
            .await,
        "a tenant admin, fleet-wide",
    );
    // Not before the admin has a second factor of their own.
    assert_field_error(
        &boss
            .call(
                "set_two_factor_policy",
                &[("tenant_id", &t), ("required", "on")],
            )
            .await,
        "required",
    );
    enrol(&app, &boss).await;
    let on: bool = boss
        .call_as(
            "set_two_factor_policy",
            &[("tenant_id", &t), ("required", "on")],
        )
        .await
        .unwrap();
    assert!(on);
    assert!(app
        .audit_actions()
        .await
        .contains(&"tenant.two_factor.require".to_string()));

    // Bob's session now opens only the setup: every other call is refused with a clear
    // error, pages send him to /two-factor.
    assert!(matches!(
        bob.call("my_vms", &[]).await,
        Err((403, app::error::AppError::TwoFactorRequired))
    ));
    assert_eq!(
        bob.get("/vms").await.headers()["location"],
        "/two-factor",
        "pages send him to the setup"
    );
    let status: TwoFactorStatus = bob.call_as("my_two_factor", &[]).await.unwrap();
    assert_eq!(status.required_by, vec!["acme".to_string()]);
    let (e, _) = enrol(&app, &bob).await;
    bob.call("my_vms", &[]).await.expect("set up: in again");
    // Required: it cannot be turned off.
    app.clock.advance(Duration::seconds(30));
    assert!(matches!(
        bob.call("disable_two_factor", &[("code", &code_at(&e, &app))])
            .await,
        Err((409, _))
    ));
    // Another tenant's member is not affected.
    gail.call("my_vms", &[])
        .await
        .expect("globex requires nothing");

    // Fleet-wide, by a fleet admin: everyone without a second factor is asked.
    let admin = app.fleet_admin().await;
    enrol(&app, &admin).await;
    let fleet: bool = admin
        .call_as("set_two_factor_policy", &[("required", "on")])
        .await
        .unwrap();
    assert!(fleet);
    assert!(matches!(
        gail.call("my_vms", &[]).await,
        Err((403, app::error::AppError::TwoFactorRequired))
    ));
    let off: bool = admin.call_as("set_two_factor_policy", &[]).await.unwrap();
    assert!(!off);
    gail.call("my_vms", &[]).await.expect("required no more");
}
