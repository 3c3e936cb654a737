//! The typed vocabulary in `app` and the database's CHECK constraints and functions agree: a
//! state added on one side only fails here, not in production.
use crate::common::*;
use app::states::RequestState;
use std::collections::BTreeSet;

/// The quoted values of the CHECK constraints on `table.column`.
async fn checked_values(app: &TestApp, table: &str, column: &str) -> BTreeSet<String> {
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
         WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2",
    )
    .bind(table)
    .bind(column)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(defs.len(), 1, "one CHECK on {table}.{column}: {defs:?}");
    defs[0]
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn request_states_are_the_databases() {
    let app = spawn_app().await;
    let ours: BTreeSet<String> = RequestState::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(ours, checked_values(&app, "requests", "state").await);
}

#[tokio::test]
async fn vm_phases_and_which_hold_resources_are_the_databases() {
    use app::states::VmPhase;
    let app = spawn_app().await;
    let ours: BTreeSet<String> = VmPhase::ALL
        .iter()
        .map(|p| p.as_str().to_string())
        .collect();
    assert_eq!(ours, checked_values(&app, "vms", "phase").await);
    for p in VmPhase::ALL {
        let building: bool = sqlx::query_scalar("SELECT vm_phase_building($1)")
            .bind(p.as_str())
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(building, p.building(), "{p}");
    }
}

#[tokio::test]
async fn approval_decisions_are_the_databases() {
    use app::states::Decision;
    let app = spawn_app().await;
    let ours: BTreeSet<String> = Decision::ALL
        .iter()
        .map(|d| d.as_str().to_string())
        .collect();
    assert_eq!(
        ours,
        checked_values(&app, "request_approvals", "decision").await
    );
}
