//! Row-level security as the second wall between tenants.

use crate::common::*;
use app::account::Actor;
use app::audit::AuditEntry;
use app::tenant::{Member, MyInvitation, NewInvitation};
use app::Page;
use concierge::platform::db::{self, Scope};

#[tokio::test]
async fn the_runtime_role_is_neither_owner_nor_superuser() {
    let app = spawn_app().await;
    let (user, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    assert_eq!(user, "concierge_app");
    assert!(!superuser && !bypass);
    let owns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user",
    )
    .fetch_one(&app.state.pool)
    .await
    .unwrap();
    assert_eq!(owns, 0);
}

#[tokio::test]
async fn without_tenant_context_no_tenant_rows_are_visible() {
    let app = spawn_app().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let admin = app.fleet_admin().await;
    for (t, email) in [(a, "a@example.com"), (b, "b@example.com")] {
        let invitation: NewInvitation = admin
            .call_as(
                "add_member",
                &[
                    ("tenant_id", &t.to_string()),
                    ("email", email),
                    ("display_name", "X"),
                    ("role", "requester"),
                ],
            )
            .await
            .unwrap();
        app.join(&invitation, "X").await;
    }
    assert_eq!(app.scalar_i64("SELECT count(*) FROM memberships").await, 2);
    assert!(
        app.scalar_i64("SELECT count(*) FROM audit_log WHERE tenant_id IS NOT NULL")
            .await
            >= 2
    );

    // The runtime role, no context: nothing.
    let pool = &app.state.pool;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM memberships")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Tenant A's context: only A's rows, and writing into B is refused.
    let mut tx = db::begin(pool, Scope::tenant(a)).await.unwrap();
    let tenants: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT DISTINCT tenant_id FROM memberships")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![a]);
    let audit: Vec<Option<uuid::Uuid>> =
        sqlx::query_scalar("SELECT DISTINCT tenant_id FROM audit_log")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    assert_eq!(audit, vec![Some(a)]);
    let someone: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users LIMIT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(
        "INSERT INTO memberships (tenant_id, user_id, role) VALUES ($1, $2, 'requester')",
    )
    .bind(b)
    .bind(someone)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);

    // The audit trail is append-only for the runtime role.
    let mut tx = db::begin(pool, Scope::fleet()).await.unwrap();
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn tenant_admins_see_only_their_tenants_audit_and_members() {
    let app = spawn_app().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let (_, admin_a) = app
        .signed_in("boss-a@example.com", Some((a, "tenant_admin")))
        .await;
    let (_, admin_b) = app
        .signed_in("boss-b@example.com", Some((b, "tenant_admin")))
        .await;
    for (admin, t, email, name) in [
        (&admin_a, a, "ann@example.com", "Ann"),
        (&admin_b, b, "bob@example.com", "Bob"),
    ] {
        let invitation: NewInvitation = admin
            .call_as(
                "add_member",
                &[
                    ("tenant_id", &t.to_string()),
                    ("email", email),
                    ("display_name", name),
                    ("role", "requester"),
                ],
            )
            .await
            .unwrap();
        app.join(&invitation, name).await;
    }
    let page: Page<AuditEntry> = admin_a.call_as("list_audit", &[]).await.unwrap();
    let items = &page.items;
    assert!(!items.is_empty());
    assert!(items.iter().all(|e| e.tenant_id == Some(a)), "{items:?}");
    let members: Vec<Member> = admin_a
        .call_as("list_members", &[("tenant_id", &a.to_string())])
        .await
        .unwrap();
    let emails: Vec<&str> = members.iter().map(|m| m.email.as_str()).collect();
    assert_eq!(emails, vec!["ann@example.com", "boss-a@example.com"]);
    assert_refused(
        &admin_a
            .call("list_members", &[("tenant_id", &b.to_string())])
            .await,
        "other tenant's members",
    );
    assert_refused(
        &admin_a
            .call("list_audit", &[("tenant_id", &b.to_string())])
            .await,
        "other tenant's audit",
    );
}

/// Outside testing: a tenant admin could enrol any existing account of another tenant by its
/// address, learn that it exists and see its name. Now "add member" answers the same for any
/// address and membership starts only when the invitee accepts.
#[tokio::test]
async fn inviting_an_existing_account_reveals_nothing_and_needs_its_consent() {
    let app = spawn_app().await;
    let a = app.tenant("A").await;
    let b = app.tenant("B").await;
    let (_, admin_a) = app
        .signed_in("boss-a@example.com", Some((a, "tenant_admin")))
        .await;
    let (bob_id, bob) = app
        .signed_in("bob@example.com", Some((b, "requester")))
        .await;
    sqlx::query("UPDATE users SET display_name = 'Robert Secret-Name' WHERE id = $1")
        .bind(bob_id)
        .execute(&app.db)
        .await
        .unwrap();
    let invite = |email: &'static str| {
        let admin_a = admin_a.clone();
        async move {
            admin_a
                .call(
                    "add_member",
                    &[
                        ("tenant_id", &a.to_string()),
                        ("email", email),
                        ("role", "approver"),
                    ],
                )
                .await
                .unwrap()
        }
    };
    // Kept as JSON: the answers' raw shape and text are what must not tell the two apart.
    let existing = invite("bob@example.com").await;
    let unknown = invite("nobody-yet@example.com").await;
    let shape = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(shape(&existing), shape(&unknown));
    // The raw JSON text of each answer: the name or id must appear in no field at all.
    for seen in [
        existing.to_string(),
        admin_a
            .call("list_members", &[("tenant_id", &a.to_string())])
            .await
            .unwrap()
            .to_string(),
        admin_a
            .call("list_invitations", &[("tenant_id", &a.to_string())])
            .await
            .unwrap()
            .to_string(),
    ] {
        assert!(!seen.contains("Robert"), "{seen}");
        assert!(!seen.contains(&bob_id.to_string()), "{seen}");
    }
    let members_of_a = || async {
        app.scalar_i64(&format!(
            "SELECT count(*) FROM memberships WHERE tenant_id = '{a}' AND user_id = '{bob_id}'"
        ))
        .await
    };
    assert_eq!(members_of_a().await, 0, "not a member before consenting");

    // The code is no way in for an existing account.
    let r = app
        .client()
        .call(
            "join",
            &[
                ("email", "bob@example.com"),
                ("code", as_dto::<NewInvitation>(&existing).code.as_str()),
                ("display_name", "Mallory"),
                ("password", "mallory's new password"),
                ("confirm_password", "mallory's new password"),
            ],
        )
        .await;
    assert!(assert_field_error(&r, "email").contains("already has an account"));
    assert_eq!(members_of_a().await, 0);

    // Bob sees it, declines; invited again, accepts.
    let mine: Vec<MyInvitation> = bob.call_as("my_invitations", &[]).await.unwrap();
    assert_eq!(mine[0].tenant_name, "A", "{mine:?}");
    let id = mine[0].id.to_string();
    bob.call("decline_invitation", &[("id", &id)])
        .await
        .unwrap();
    assert_eq!(members_of_a().await, 0);
    assert_eq!(
        bob.call_as::<Vec<MyInvitation>>("my_invitations", &[])
            .await
            .unwrap(),
        Vec::<MyInvitation>::new()
    );
    invite("bob@example.com").await;
    let mine: Vec<MyInvitation> = bob.call_as("my_invitations", &[]).await.unwrap();
    let id = mine[0].id.to_string();
    bob.call("accept_invitation", &[("id", &id)]).await.unwrap();
    assert_eq!(members_of_a().await, 1);
    let actor: Actor = bob
        .call_as::<Option<Actor>>("current_actor", &[])
        .await
        .unwrap()
        .expect("signed in");
    let tenants: Vec<&str> = actor
        .memberships
        .iter()
        .map(|m| m.tenant_name.as_str())
        .collect();
    assert_eq!(tenants, ["A", "B"]);
    let actions = app.audit_actions().await;
    for a in ["member.invite", "member.decline", "member.join"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}
