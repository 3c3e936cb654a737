//! Bad input gets a clear error on the right field and changes nothing; good input is
//! audited with before and after.

use crate::common::*;
use app::account::{Actor, OneTimePassword};
use app::audit::AuditEntry;
use app::tenant::NewInvitation;
use app::Page;

#[tokio::test]
async fn tenant_names_are_validated() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    admin
        .call("create_tenant", &[("name", "Acme")])
        .await
        .unwrap();
    let before = app.snapshot().await;
    for (name, expect) in [
        ("", "Enter a name."),
        ("   ", "Enter a name."),
        (&"x".repeat(101), "Use at most 100 characters."),
        ("ACME", "A tenant with that name already exists."),
        ("Bad\u{1}Name", "Remove control characters from the name."),
    ] {
        let r = admin.call("create_tenant", &[("name", name)]).await;
        assert_eq!(assert_field_error(&r, "name"), expect, "{name:?}");
        assert_eq!(before, app.snapshot().await);
    }
    let acme: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'Acme'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    admin
        .call("create_tenant", &[("name", "Other")])
        .await
        .unwrap();
    let before = app.snapshot().await;
    let r = admin
        .call(
            "rename_tenant",
            &[("tenant_id", &acme.to_string()), ("name", "other")],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "name"),
        "A tenant with that name already exists."
    );
    let r = admin
        .call(
            "rename_tenant",
            &[
                ("tenant_id", &uuid::Uuid::new_v4().to_string()),
                ("name", "Nope"),
            ],
        )
        .await;
    assert!(matches!(r, Err((404, _))), "{r:?}");
    let r = admin
        .call(
            "rename_tenant",
            &[("tenant_id", "not-a-uuid"), ("name", "Nope")],
        )
        .await;
    assert!(matches!(r, Err((400, _))), "{r:?}");
    assert_eq!(before, app.snapshot().await);

    admin
        .call(
            "rename_tenant",
            &[("tenant_id", &acme.to_string()), ("name", "Acme Corp")],
        )
        .await
        .unwrap();
    // The audit row's JSON columns, read from the database: no server-function DTO.
    let (before, after): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT before, after FROM audit_log WHERE action = 'tenant.rename'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(before["name"], "Acme");
    assert_eq!(after["name"], "Acme Corp");
}

#[tokio::test]
async fn user_fields_are_validated() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let before = app.snapshot().await;
    let r = admin
        .call(
            "create_user",
            &[("email", "not-an-email"), ("display_name", "")],
        )
        .await;
    assert!(assert_field_error(&r, "email").contains("e-mail address"));
    assert_eq!(assert_field_error(&r, "display_name"), "Enter a name.");
    let r = admin
        .call(
            "create_user",
            &[("email", "ADMIN@concierge.local"), ("display_name", "Dup")],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "email"),
        "That e-mail address is already in use."
    );
    let r = admin
        .call(
            "create_user",
            &[("email", "x@<script>.io"), ("display_name", "X")],
        )
        .await;
    assert_field_error(&r, "email");
    assert_eq!(before, app.snapshot().await);

    let otp: OneTimePassword = admin
        .call_as(
            "create_user",
            &[
                ("email", " New@Example.com "),
                ("display_name", " New Person "),
            ],
        )
        .await
        .unwrap();
    assert_eq!(otp.email, "new@example.com");
    let pw = otp.password;
    let c = app.client();
    c.login("new@example.com", &pw).await.unwrap();
    let actor: Actor = c
        .call_as::<Option<Actor>>("current_actor", &[])
        .await
        .unwrap()
        .expect("signed in");
    assert!(actor.must_change_password);
    assert_eq!(actor.display_name, "New Person");
}

#[tokio::test]
async fn member_fields_are_validated() {
    let app = spawn_app().await;
    let t = app.tenant("Acme").await;
    let (_, boss) = app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    let tid = t.to_string();
    let before = app.snapshot().await;
    let r = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "ann@example.com"),
                ("display_name", "Ann"),
                ("role", "emperor"),
            ],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "role"),
        "Choose one of the listed roles."
    );
    let r = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "ann@example.com"),
                ("display_name", "A\u{7}nn"),
                ("role", "requester"),
            ],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "display_name"),
        "Remove control characters from the name."
    );
    let r = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "boss@example.com"),
                ("display_name", "B"),
                ("role", "requester"),
            ],
        )
        .await;
    assert_eq!(
        assert_field_error(&r, "email"),
        "That person is already a member."
    );
    let r = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "nope"),
                ("display_name", "B"),
                ("role", "nope"),
            ],
        )
        .await;
    assert_field_error(&r, "email");
    assert_field_error(&r, "role");
    // Admins cannot lock themselves out.
    let me: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'boss@example.com'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let r = boss
        .call(
            "remove_member",
            &[("tenant_id", &tid), ("user_id", &me.to_string())],
        )
        .await;
    assert!(matches!(r, Err((409, _))), "{r:?}");
    let r = boss
        .call(
            "set_member_role",
            &[
                ("tenant_id", &tid),
                ("user_id", &me.to_string()),
                ("role", "requester"),
            ],
        )
        .await;
    assert!(matches!(r, Err((409, _))), "{r:?}");
    assert_eq!(before, app.snapshot().await);

    // An existing account and a new address get the same answer: an invitation with a code.
    // Kept as JSON: the two answers' raw keys must be the same.
    app.user("known@example.com", None).await;
    let known = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "known@example.com"),
                ("display_name", ""),
                ("role", "approver"),
            ],
        )
        .await
        .unwrap();
    let fresh = boss
        .call(
            "add_member",
            &[
                ("tenant_id", &tid),
                ("email", "fresh@example.com"),
                ("display_name", "Fresh"),
                ("role", "manager"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(as_dto::<NewInvitation>(&fresh).email, "fresh@example.com");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&known), keys(&fresh));
    assert_eq!(keys(&fresh), ["code", "email", "expires_at"]);
    let actions = app.audit_actions().await;
    assert_eq!(
        actions[actions.len() - 2..],
        ["member.invite", "member.invite"]
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM users WHERE email = 'fresh@example.com'")
            .await,
        0,
        "no account before the invitee joins"
    );
}

#[tokio::test]
async fn joining_with_an_invitation_is_validated() {
    let app = spawn_app().await;
    let t = app.tenant("Acme").await;
    let (_, boss) = app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    let invitation: NewInvitation = boss
        .call_as(
            "add_member",
            &[
                ("tenant_id", &t.to_string()),
                ("email", "new@example.com"),
                ("role", "requester"),
            ],
        )
        .await
        .unwrap();
    let code = invitation.code.as_str();
    let before = app.snapshot().await;
    let visitor = app.client();
    let join = |email: &'static str,
                code: String,
                name: &'static str,
                pw: &'static str,
                confirm: &'static str| {
        let visitor = visitor.clone();
        async move {
            visitor
                .call(
                    "join",
                    &[
                        ("email", email),
                        ("code", &code),
                        ("display_name", name),
                        ("password", pw),
                        ("confirm_password", confirm),
                    ],
                )
                .await
        }
    };
    let r = join("nope", String::new(), "", "short", "other").await;
    for field in ["email", "code", "display_name", "password"] {
        assert_field_error(&r, field);
    }
    let r = join(
        "new@example.com",
        code.into(),
        "New",
        PASSWORD,
        "different password!",
    )
    .await;
    assert_eq!(
        assert_field_error(&r, "confirm_password"),
        "The two passwords differ."
    );
    // A wrong code, or the right code for another address.
    let r = join(
        "new@example.com",
        "aaaaa-bbbbb-ccccc-ddddd".into(),
        "New",
        PASSWORD,
        PASSWORD,
    )
    .await;
    assert!(assert_field_error(&r, "code").contains("not an open invitation"));
    let r = join("other@example.com", code.into(), "New", PASSWORD, PASSWORD).await;
    assert!(assert_field_error(&r, "code").contains("not an open invitation"));
    // Failed tries only count towards the throttle (and its audit rows).
    let _ = sqlx::query("DELETE FROM login_failures")
        .execute(&app.db)
        .await;
    let after: String = app.snapshot().await;
    assert_eq!(
        before.split('|').take(5).collect::<Vec<_>>(),
        after.split('|').take(5).collect::<Vec<_>>()
    );

    // The right code: the account exists, is a member and is signed in.
    let r = join(
        "NEW@example.com",
        code.into(),
        "New Person",
        PASSWORD,
        PASSWORD,
    )
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(visitor.whoami().await.as_deref(), Some("new@example.com"));
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = 'new@example.com'")
            .await,
        1
    );
    // A code works once.
    let again = app.client();
    let r = again
        .call(
            "join",
            &[
                ("email", "new@example.com"),
                ("code", code),
                ("display_name", "New"),
                ("password", PASSWORD),
                ("confirm_password", PASSWORD),
            ],
        )
        .await;
    assert!(assert_field_error(&r, "code").contains("not an open invitation"));
}

#[tokio::test]
async fn fleet_admins_cannot_lock_themselves_out() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let me = app.scalar_i64("SELECT count(*) FROM users").await;
    assert_eq!(me, 1);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let before = app.snapshot().await;
    for (ep, form) in [
        (
            "set_user_disabled",
            vec![
                ("user_id", id.to_string()),
                ("disabled", "true".to_string()),
            ],
        ),
        (
            "set_fleet_admin",
            vec![
                ("user_id", id.to_string()),
                ("fleet_admin", "false".to_string()),
            ],
        ),
        ("reset_password", vec![("user_id", id.to_string())]),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = admin.call(ep, &form).await;
        assert!(matches!(r, Err((409, _))), "{ep}: {r:?}");
    }
    assert_eq!(before, app.snapshot().await);
}

#[tokio::test]
async fn granting_fleet_admin_requires_a_fresh_sign_in() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    let (id, ann) = app.signed_in("ann@example.com", None).await;
    admin
        .call(
            "set_fleet_admin",
            &[("user_id", &id.to_string()), ("fleet_admin", "true")],
        )
        .await
        .unwrap();
    assert_eq!(
        ann.whoami().await,
        None,
        "privilege change ends old sessions"
    );
    ann.login("ann@example.com", PASSWORD).await.unwrap();
    assert!(ann.call("list_tenants", &[]).await.is_ok());
    // The audit row's JSON columns, read from the database: no server-function DTO.
    let (b, a): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT before, after FROM audit_log WHERE action = 'user.fleet_admin'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        (b["fleet_admin"].clone(), a["fleet_admin"].clone()),
        (false.into(), true.into())
    );
}

#[tokio::test]
async fn audit_filters_and_pagination() {
    let app = spawn_app().await;
    let admin = app.fleet_admin().await;
    for i in 0..60 {
        admin
            .call("create_tenant", &[("name", &format!("T{i:02}"))])
            .await
            .unwrap();
    }
    let audit = |form: Vec<(&'static str, &'static str)>| {
        let admin = admin.clone();
        async move { admin.call_as::<Page<AuditEntry>>("list_audit", &form).await }
    };
    let page1 = audit(vec![("action", "tenant."), ("page", "1")])
        .await
        .unwrap();
    assert_eq!(page1.total, 60);
    assert_eq!(page1.items.len(), 50);
    assert_eq!(page1.items[0].after.as_deref(), Some("{\"name\":\"T59\"}"));
    let page2 = audit(vec![("action", "tenant."), ("page", "2")])
        .await
        .unwrap();
    assert_eq!(page2.items.len(), 10);
    let none = audit(vec![("action", "tenant.%")]).await.unwrap();
    assert_eq!(none.total, 0, "LIKE wildcards in filters are literal");
    let by_actor = audit(vec![("actor", "ADMIN@")]).await.unwrap();
    assert!(by_actor.total >= 60);
    let r = admin
        .call("list_audit", &[("action", &"x".repeat(101))])
        .await;
    assert_field_error(&r, "action");
    let r = admin
        .call("list_audit", &[("actor", &"x".repeat(255))])
        .await;
    assert_field_error(&r, "actor");
    // Sorted on the server: oldest first, or by action.
    let oldest = audit(vec![("action", "tenant."), ("sort", "oldest")])
        .await
        .unwrap();
    assert_eq!(oldest.items[0].after.as_deref(), Some("{\"name\":\"T00\"}"));
    let by_action = audit(vec![("sort", "action")]).await.unwrap();
    let actions: Vec<&str> = by_action.items.iter().map(|e| e.action.as_str()).collect();
    // Grouped by action (the order within the collation is PostgreSQL's).
    let mut groups = actions.clone();
    groups.dedup();
    let mut distinct = groups.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(groups.len(), distinct.len(), "{actions:?}");
    assert_field_error(&admin.call("list_audit", &[("sort", "size")]).await, "sort");
    // A page past the end is empty but still counts the matches.
    let past = audit(vec![("action", "tenant."), ("page", "9")])
        .await
        .unwrap();
    assert_eq!(past.total, 60);
    assert_eq!(past.items.len(), 0);
}
