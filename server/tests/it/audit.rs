//! The tamper-evident audit trail (issue 19): chains sealed at commit, signed checkpoints,
//! `concierge audit verify` against the database and against an export, tampering by the
//! database owner detected, concurrent writers leaving a gap-free chain.
use crate::common::*;
use app::audit::ChainState;
use concierge::platform::audit::{self, Event, Origin};
use concierge::platform::db::{self, Scope};
use std::process::Command;
use uuid::Uuid;

const KEY: &str = "concierge-test-audit.key";

fn key_file() -> std::path::PathBuf {
    std::env::temp_dir().join(KEY)
}

/// `concierge audit verify` with `args`: (exit code, what it printed).
fn verify_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_concierge"))
        .arg("audit")
        .arg("verify")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run concierge audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn verify_db(app: &TestApp) -> (i32, String) {
    let key = key_file();
    verify_cli(&[
        "--database-url",
        &app.url,
        "--key-file",
        key.to_str().unwrap(),
    ])
}

/// `n` audited events in `tenant`'s chain, each in its own transaction, written as the
/// server writes them.
async fn events(app: &TestApp, tenant: Option<Uuid>, n: usize) {
    for i in 0..n {
        let scope = match tenant {
            Some(t) => Scope::tenant(t),
            None => Scope::fleet(),
        };
        let mut tx = db::begin(&app.state.pool, scope).await.unwrap();
        let origin = Origin {
            actor_email: Some(format!("user{i}@example.com")),
            client_addr: Some("192.0.2.7".parse().unwrap()),
            ..Origin::default()
        };
        audit::record(
            &mut tx,
            &origin,
            Event::new("test.event", "thing", i)
                .tenant_opt(tenant)
                .after(serde_json::json!({ "n": i, "name": "Ünïcode ✓" })),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
}

async fn chain_len(app: &TestApp, chain: Uuid) -> i64 {
    sqlx::query_scalar("SELECT seq FROM audit_chains WHERE chain = $1")
        .bind(chain)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn owner(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sql).execute(&app.db).await.unwrap();
}

#[tokio::test]
async fn tampering_by_the_database_owner_is_detected_by_verify_and_on_the_page() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let (_, boss) = app
        .signed_in("boss@example.com", Some((acme, "tenant_admin")))
        .await;
    let (_, ann) = app
        .signed_in("ann@example.com", Some((acme, "requester")))
        .await;
    let admin = app.fleet_admin().await;
    events(&app, Some(acme), 12).await;
    events(&app, None, 3).await;
    let n = chain_len(&app, acme).await;
    assert_eq!(n, 12);

    // Intact: the command says so per chain and exits 0.
    let (code, out) = verify_db(&app);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("tenant {acme} chain: intact up to 12")),
        "{out}"
    );
    assert!(out.contains("fleet chain: intact up to"), "{out}");

    // A checkpoint round signs both chains' heads.
    let signed = app.state.audit_checkpoints.tick().await.unwrap();
    assert!(signed >= 2, "{signed}");
    let (code, out) = verify_db(&app);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(1 signed checkpoints reproduced)"), "{out}");

    // Tenant admins read and verify their own chain only; requesters not at all.
    let mine: Vec<ChainState> = boss
        .call_as("verify_audit", &[("tenant_id", &acme.to_string())])
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].intact_to, mine[0].problem.clone()),
        (Some(12), None)
    );
    assert_eq!(mine[0].checkpoint_seq, Some(12));
    // Without a tenant: the chains of the tenants they administer.
    let theirs: Vec<ChainState> = boss.call_as("audit_chains", &[]).await.unwrap();
    assert_eq!(
        theirs.iter().map(|c| c.chain).collect::<Vec<_>>(),
        vec![acme]
    );
    let other = app.tenant("globex").await;
    assert_refused(
        &boss
            .call("audit_chains", &[("tenant_id", &other.to_string())])
            .await
            .map(|_| ()),
        "boss: another tenant's chain",
    );
    assert_refused(
        &ann.call("audit_chains", &[("tenant_id", &acme.to_string())])
            .await
            .map(|_| ()),
        "a requester",
    );
    assert_eq!(ann.get("/audit/export.jsonl").await.status(), 403);

    // 1. A row updated in place.
    owner(
        &app,
        &format!("UPDATE audit_log SET actor_email = 'mallory@example.com' WHERE chain = '{acme}' AND seq = 5"),
    )
    .await;
    let (code, out) = verify_db(&app);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN: intact up to 4, then row 5 was changed after it was sealed"),
        "{out}"
    );
    // The page's verification says the same.
    let seen: Vec<ChainState> = admin
        .call_as("verify_audit", &[("tenant_id", &acme.to_string())])
        .await
        .unwrap();
    assert_eq!(
        seen[0].problem.as_deref(),
        Some("row 5 was changed after it was sealed")
    );
    let page = admin
        .get(&format!("/audit?tenant={acme}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Broken"),
        "the audit page shows the broken chain"
    );
    assert!(page.contains("row 5 was changed after it was sealed"));
    owner(
        &app,
        &format!("UPDATE audit_log SET actor_email = 'user4@example.com' WHERE chain = '{acme}' AND seq = 5"),
    )
    .await;
    assert_eq!(verify_db(&app).0, 0);

    // 2. A row deleted.
    owner(
        &app,
        &format!(
            "CREATE TABLE kept AS SELECT * FROM audit_log WHERE chain = '{acme}' AND seq = 7;
             DELETE FROM audit_log WHERE chain = '{acme}' AND seq = 7"
        ),
    )
    .await;
    let (code, out) = verify_db(&app);
    assert_eq!(code, 1);
    assert!(
        out.contains("intact up to 6, then row 7 is missing"),
        "{out}"
    );
    owner(
        &app,
        "ALTER TABLE audit_log DISABLE TRIGGER audit_seal;
         INSERT INTO audit_log SELECT * FROM kept; DROP TABLE kept;
         ALTER TABLE audit_log ENABLE TRIGGER audit_seal",
    )
    .await;
    assert_eq!(verify_db(&app).0, 0);

    // 3. Two rows swapped.
    let swap = format!(
        "UPDATE audit_log SET seq = -1 WHERE chain = '{acme}' AND seq = 8;
         UPDATE audit_log SET seq = 8 WHERE chain = '{acme}' AND seq = 9;
         UPDATE audit_log SET seq = 9 WHERE chain = '{acme}' AND seq = -1"
    );
    owner(&app, &swap).await;
    let (code, out) = verify_db(&app);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "intact up to 7, then row 8 does not follow row 7: rows were removed or moved here"
        ),
        "{out}"
    );
    owner(&app, &swap).await;
    assert_eq!(verify_db(&app).0, 0);

    // 4. The tail cut off, and the chain's head set back to match by a careful owner: the
    // signed checkpoint still says 12.
    owner(
        &app,
        &format!(
            "DELETE FROM audit_log WHERE chain = '{acme}' AND seq > 10;
             UPDATE audit_chains SET seq = 10, head = (SELECT row_hash FROM audit_log WHERE chain = '{acme}' AND seq = 10)
             WHERE chain = '{acme}'"
        ),
    )
    .await;
    let (code, out) = verify_db(&app);
    assert_eq!(code, 1);
    assert!(
        out.contains("intact up to 10, then rows 11 to 12 are missing: checkpoint"),
        "{out}"
    );
    // Rows written after that continue the cut chain; the next checkpoint round walks from
    // the signed checkpoint, finds they do not follow it, records it and signs nothing.
    events(&app, Some(acme), 3).await;
    app.state.audit_checkpoints.tick().await.unwrap();
    let states: Vec<ChainState> = boss
        .call_as("audit_chains", &[("tenant_id", &acme.to_string())])
        .await
        .unwrap();
    assert!(
        states[0]
            .problem
            .as_deref()
            .is_some_and(|p| p.contains("row 13 does not follow row 12")),
        "{states:?}"
    );
    assert_eq!(states[0].checkpoint_seq, Some(12));
}

#[tokio::test]
async fn an_export_verifies_offline_and_a_changed_line_does_not() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    let admin = app.fleet_admin().await;
    events(&app, Some(acme), 20).await;
    app.state.audit_checkpoints.tick().await.unwrap();
    events(&app, Some(acme), 5).await;

    let dir = std::env::temp_dir().join(format!("concierge-audit-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Compressed, as a browser asks for it (the stream must end cleanly through the layer).
    let brotli = admin
        .http
        .get(format!("{}/audit/export.jsonl", admin.base))
        .header("Accept-Encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(brotli.status(), 200);
    assert_eq!(brotli.headers()["content-encoding"], "br");
    assert!(!brotli
        .bytes()
        .await
        .expect("the whole compressed body")
        .is_empty());
    let export = admin.get("/audit/export.jsonl").await;
    assert_eq!(export.status(), 200);
    let jsonl = export.text().await.unwrap();
    let checkpoints = admin
        .get("/audit/checkpoints.json")
        .await
        .text()
        .await
        .unwrap();
    let (rows, cps) = (dir.join("audit.jsonl"), dir.join("checkpoints.json"));
    std::fs::write(&rows, &jsonl).unwrap();
    std::fs::write(&cps, &checkpoints).unwrap();
    let args = |r: &std::path::Path| {
        vec![
            "--file".to_string(),
            r.to_str().unwrap().to_string(),
            "--checkpoints".to_string(),
            cps.to_str().unwrap().to_string(),
        ]
    };
    let run = |a: Vec<String>| verify_cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, out) = run(args(&rows));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "tenant {acme} chain: intact up to 25 (1 signed checkpoints reproduced)"
        )),
        "{out}"
    );

    // The CSV has the same rows and hashes.
    let csv = admin.get("/audit/export.csv").await.text().await.unwrap();
    assert!(
        csv.starts_with("chain,seq,at,actor_id,actor_email,tenant_id,action"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), jsonl.lines().count() + 1);

    // One entry's text changed in the file.
    let changed = jsonl.replacen("user3@example.com", "user9@example.com", 1);
    let bad = dir.join("changed.jsonl");
    std::fs::write(&bad, changed).unwrap();
    let (code, out) = run(args(&bad));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("row 4 was changed after it was sealed"),
        "{out}"
    );

    // A checkpoint file from another key is not trusted.
    let forged = checkpoints.replacen(
        &serde_json::from_str::<serde_json::Value>(&checkpoints).unwrap()["public_key"]
            .as_str()
            .unwrap()
            .to_string(),
        &"ab".repeat(32),
        1,
    );
    std::fs::write(&cps, forged).unwrap();
    let (code, out) = run(args(&rows));
    assert_ne!(code, 0, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn concurrent_writers_leave_a_gap_free_chain_and_100000_rows_verify() {
    let app = spawn_app().await;
    let acme = app.tenant("acme").await;
    // 100 transactions at once, half writing the tenant's chain then the fleet's, half the
    // other way round: the seal locks chains in one order, so none deadlocks.
    let mut tasks = vec![];
    for i in 0..100 {
        let pool = app.state.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = db::begin(&pool, Scope::fleet()).await.unwrap();
            let order = if i % 2 == 0 {
                [Some(acme), None]
            } else {
                [None, Some(acme)]
            };
            for t in order {
                audit::record(
                    &mut tx,
                    &Origin::default(),
                    Event::new("test.parallel", "thing", i).tenant_opt(t),
                )
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (count, max): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), max(seq) FROM audit_log WHERE chain = $1")
            .bind(acme)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((count, max), (100, Some(100)), "gap-free");
    let (code, out) = verify_db(&app);
    assert_eq!(code, 0, "{out}");

    // 100,000 rows in the tenant's chain (written by the owner in one statement: the seal
    // runs for each at commit) verify.
    owner(
        &app,
        &format!(
            "INSERT INTO audit_log (tenant_id, action, object_type, object_id, after)
             SELECT '{acme}', 'test.bulk', 'thing', g::text, jsonb_build_object('g', g)
             FROM generate_series(1, 100000) g"
        ),
    )
    .await;
    assert_eq!(chain_len(&app, acme).await, 100_100);
    let (code, out) = verify_db(&app);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact up to 100100"), "{out}");
}
