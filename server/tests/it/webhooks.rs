//! Webhooks, delivered to a real HTTP server on loopback (Python's `http.server`,
//! `tests/support/webhook_receiver.py`), their signatures checked by Python's `hmac` (an
//! implementation independent of ours; ours also reproduces the Standard Webhooks test vector,
//! see the unit tests): one delivery per event, retries with the same `webhook-id`, 410 and a
//! day of failures turn an endpoint off, redirects are not followed, internal addresses are
//! refused unless allowed, and no tenant hears another's events.

use crate::common::*;
use crate::provisioning::world_with;
use app::notifications::{Notification, NotificationKind};
use app::states::RequestState;
use app::webhooks::{CreatedWebhook, WebhookEndpoint, WebhookOverview};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Receiver {
    child: std::process::Child,
    dir: PathBuf,
    base: String,
}

impl Receiver {
    fn start() -> Receiver {
        let dir = std::env::temp_dir().join(format!("concierge-hooks-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/webhook_receiver.py"
        );
        let child = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.join("log.jsonl"))
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("python3");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the receiver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn at(&self, path: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect()
    }

    async fn wait(&self, what: &str, mut done: impl FnMut(&Receiver) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}: never; received {:#?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks a received request's signature as a receiver would, with Python's `hmac`.
const VERIFY: &str = r#"
import base64, hashlib, hmac, json, sys
secret, record = sys.argv[1], json.loads(sys.argv[2])
key = base64.b64decode(secret.removeprefix("whsec_"))
signed = f"{record['id']}.{record['timestamp']}.{record['body']}".encode()
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
given = [s.split(",", 1)[1] for s in record["signature"].split(" ") if s.startswith("v1,")]
print(json.dumps(any(hmac.compare_digest(expected, g) for g in given)))
"#;

fn verified(secret: &str, record: &Value) -> bool {
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(VERIFY)
        .arg(secret)
        .arg(record.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn add(c: &Client, scope: &str, url: &str, events: &[&str]) -> CallResult<CreatedWebhook> {
    let mut form = vec![("scope", scope), ("url", url), ("description", "")];
    form.extend(events.iter().map(|e| ("events[]", *e)));
    c.call_as("add_webhook", &form).await
}

async fn endpoint(c: &Client, id: Uuid) -> WebhookEndpoint {
    let o: WebhookOverview = c.call_as("webhooks", &[]).await.unwrap();
    o.endpoints.into_iter().find(|e| e.id == id).unwrap()
}

fn body(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn events_reach_their_tenants_endpoints_signed_once_and_failures_are_handled() {
    let rx = Receiver::start();
    let w = world_with(|c| {
        c.webhooks_allow_private_networks = true;
        c.webhook_retry_seconds = 0.2;
    })
    .await;
    let t = w.tenant.to_string();
    let (ann, boss) = w.ann_and_boss().await;
    let other = w.app.tenant("Globex").await;
    let (_, rival) = w
        .app
        .signed_in("rival@example.com", Some((other, "tenant_admin")))
        .await;
    w.set_policy(&boss, "5", "").await;

    let all = ["request.submitted", "request.approved", "request.fulfilled"];
    let ok = add(&boss, &t, &format!("{}/ok", rx.base), &all)
        .await
        .unwrap();
    let flaky = add(
        &boss,
        &t,
        &format!("{}/flaky", rx.base),
        &["request.approved"],
    )
    .await
    .unwrap();
    let gone = add(
        &boss,
        &t,
        &format!("{}/gone", rx.base),
        &["request.approved"],
    )
    .await
    .unwrap();
    let redirect = add(
        &boss,
        &t,
        &format!("{}/redirect", rx.base),
        &["request.approved"],
    )
    .await
    .unwrap();
    add(
        &rival,
        &other.to_string(),
        &format!("{}/ok-other", rx.base),
        &all,
    )
    .await
    .unwrap();
    // The fleet-wide endpoint hears every tenant.
    let fleet = add(
        &w.fleet,
        "fleet",
        &format!("{}/ok-fleet", rx.base),
        &["request.fulfilled"],
    )
    .await
    .unwrap();

    let id = w.submit(&ann, "small", "1", "web").await.unwrap();
    w.wait_for(&ann, &id.to_string(), RequestState::Fulfilled)
        .await;

    // /ok: each event once, in order, signed, with the stable payload.
    rx.wait("three events at /ok", |r| r.at("/ok").len() >= 3)
        .await;
    rx.wait("the fleet endpoint's event", |r| {
        !r.at("/ok-fleet").is_empty()
    })
    .await;
    let got = rx.at("/ok");
    // Deliveries run in parallel and need not arrive in order (events of one transaction even
    // share their timestamp): each type once.
    let mut types: Vec<String> = got
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    let mut all_sorted = all.to_vec();
    all_sorted.sort();
    assert_eq!(types, all_sorted, "{got:#?}");
    for r in &got {
        assert!(verified(&ok.secret, r), "signature: {r:#?}");
        assert!(
            !verified(&flaky.secret, r),
            "another endpoint's secret must not verify"
        );
        assert!(r["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(r["content_type"], "application/json");
        let b = body(r);
        assert_eq!(b["data"]["request_id"], id.to_string());
        assert_eq!(b["data"]["tenant_id"], t);
        assert_eq!(b["data"]["path"], format!("/requests/{id}"));
        assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let ids: std::collections::HashSet<&str> =
        got.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "one webhook-id per event");
    assert!(verified(&fleet.secret, &rx.at("/ok-fleet")[0]));
    // Globex's admin hears nothing of Acme.
    assert!(rx.at("/ok-other").is_empty());

    // /flaky: three 500s, then a 200, all with the same webhook-id; delivered once.
    rx.wait("the fourth attempt at /flaky", |r| {
        r.at("/flaky").len() >= 4
    })
    .await;
    let tries = rx.at("/flaky");
    assert!(
        tries.iter().all(|r| r["id"] == tries[0]["id"]),
        "{tries:#?}"
    );
    assert!(tries.iter().all(|r| verified(&flaky.secret, r)));
    let e = endpoint(&boss, flaky.id).await;
    assert_eq!(e.recent.len(), 1);
    let d = &e.recent[0];
    assert_eq!(
        (d.state.as_str(), d.attempts, d.last_status),
        ("delivered", 4, Some(200)),
        "{d:?}"
    );
    assert_eq!(d.message_id, tries[0]["id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.at("/flaky").len(), 4, "nothing after the success");

    // /gone: one attempt; the endpoint is off, its maker told and the change audited.
    rx.wait("the attempt at /gone", |r| !r.at("/gone").is_empty())
        .await;
    let started = Instant::now();
    loop {
        let e = endpoint(&boss, gone.id).await;
        if !e.enabled {
            assert!(e.disabled_reason.unwrap().contains("410"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "410 did not turn it off"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let told: Vec<Notification> = boss.call_as("my_notifications", &[]).await.unwrap();
    assert!(
        told.iter()
            .any(|n| n.kind == NotificationKind::WebhookDisabled && n.title.contains("/gone")),
        "{told:?}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook.disable' AND object_id = $1",
    )
    .bind(gone.id.to_string())
    .fetch_one(&w.app.db)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    assert_eq!(rx.at("/gone").len(), 1);

    // /redirect: the 302 is a failure, retried; the target is never reached.
    rx.wait("two attempts at /redirect", |r| {
        r.at("/redirect").len() >= 2
    })
    .await;
    assert!(rx.at("/redirected").is_empty());
    let e = endpoint(&boss, redirect.id).await;
    assert_eq!(e.recent[0].state, "pending");
    assert_eq!(e.recent[0].last_status, Some(302));
    assert!(e.recent[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("redirect"));

    // Nobody else sees or changes Acme's endpoints; a requester has no webhooks page.
    let refused = rival
        .call("remove_webhook", &[("id", &ok.id.to_string())])
        .await;
    assert!(matches!(refused, Err((404, _))), "{refused:?}");
    let refused = ann.call("webhooks", &[]).await;
    assert!(matches!(refused, Err((403, _))), "{refused:?}");
    let refused = add(&ann, &t, &format!("{}/ok", rx.base), &all).await;
    assert!(matches!(refused, Err((403, _))), "{refused:?}");
    let o: WebhookOverview = rival.call_as("webhooks", &[]).await.unwrap();
    assert_eq!(o.endpoints.len(), 1);

    // The test button sends a webhook.test event to that endpoint alone.
    boss.call("send_test_webhook", &[("id", &ok.id.to_string())])
        .await
        .unwrap();
    rx.wait("the test event", |r| r.at("/ok").len() >= 4).await;
    assert!(rx
        .at("/ok")
        .iter()
        .any(|r| body(r)["type"] == "webhook.test"));
}

#[tokio::test]
async fn a_day_of_failures_turns_an_endpoint_off_and_tells_its_maker() {
    let rx = Receiver::start();
    let app = spawn_app_with(|c| {
        c.webhooks_allow_private_networks = true;
        c.webhook_retry_seconds = 0.2;
    })
    .await;
    let tenant = app.tenant("Acme").await;
    let (_, boss) = app
        .signed_in("boss@example.com", Some((tenant, "tenant_admin")))
        .await;
    let down = add(
        &boss,
        &tenant.to_string(),
        &format!("{}/down", rx.base),
        &["webhook.test"],
    )
    .await
    .unwrap();
    boss.call("send_test_webhook", &[("id", &down.id.to_string())])
        .await
        .unwrap();
    rx.wait("two failed attempts", |r| r.at("/down").len() >= 2)
        .await;
    assert!(endpoint(&boss, down.id).await.enabled, "retried, still on");
    app.clock.advance(time::Duration::hours(25));
    // The session has ended by now (absolute timeout): sign in again.
    let boss = app.client();
    boss.login("boss@example.com", PASSWORD).await.unwrap();
    let started = Instant::now();
    let e = loop {
        let e = endpoint(&boss, down.id).await;
        if !e.enabled {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never turned off: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(e.disabled_reason.unwrap().contains("for a day"));
    assert_eq!(e.recent[0].state, "failed");
    let told: Vec<Notification> = boss.call_as("my_notifications", &[]).await.unwrap();
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].kind, NotificationKind::WebhookDisabled);
    assert_eq!(told[0].link, "/webhooks");
    // A turned-off endpoint gets no test event, and none is queued.
    let refused = boss
        .call("send_test_webhook", &[("id", &down.id.to_string())])
        .await;
    assert!(matches!(refused, Err((409, _))), "{refused:?}");
    let n = rx.at("/down").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.at("/down").len(), n);
}

#[tokio::test]
async fn internal_addresses_are_refused_by_default_when_saved_and_when_sent() {
    let rx = Receiver::start();
    let app = spawn_app().await;
    let tenant = app.tenant("Acme").await;
    let t = tenant.to_string();
    let (_, boss) = app
        .signed_in("boss@example.com", Some((tenant, "tenant_admin")))
        .await;
    for (url, says) in [
        (format!("{}/ok", rx.base), "loopback"),
        ("http://localhost:9/hook".to_string(), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "link-local",
        ),
        ("http://10.0.0.8/hook".to_string(), "private"),
        ("http://[::1]:8080/hook".to_string(), "loopback"),
        ("ftp://example.com/hook".to_string(), "http"),
        ("http://user:pw@example.com/hook".to_string(), "credentials"),
        ("not a url".to_string(), "URL"),
    ] {
        let msg = assert_field_error(&add(&boss, &t, &url, &["webhook.test"]).await, "url");
        assert!(msg.contains(says), "{url}: {msg}");
    }
    let msg = assert_field_error(
        &add(&boss, &t, "https://93.184.216.34/h", &[]).await,
        "events",
    );
    assert!(msg.contains("at least one"), "{msg}");
    let msg = assert_field_error(
        &add(&boss, &t, "https://93.184.216.34/h", &["vm.exploded"]).await,
        "events",
    );
    assert!(msg.contains("vm.exploded"), "{msg}");
    assert_field_error(
        &add(
            &boss,
            "not-a-tenant",
            "https://93.184.216.34/h",
            &["webhook.test"],
        )
        .await,
        "scope",
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing was saved");

    // An endpoint that points inside anyway (saved while allowed, or a name that now resolves
    // inside) is refused when sent to: the receiver hears nothing.
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO webhook_endpoints (tenant_id, url, secret, event_types, created_by, created_at)
         VALUES ($1, $2, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '{webhook.test}', NULL, now()) RETURNING id",
    )
    .bind(tenant)
    .bind(format!("{}/ok", rx.base))
    .fetch_one(&app.db)
    .await
    .unwrap();
    boss.call("send_test_webhook", &[("id", &id.to_string())])
        .await
        .unwrap();
    let started = Instant::now();
    let d = loop {
        let e = endpoint(&boss, id).await;
        if let Some(d) = e.recent.first().filter(|d| d.attempts > 0) {
            break d.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no attempt: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        d.last_error.as_deref().unwrap().contains("loopback"),
        "{d:?}"
    );
    assert_eq!(d.last_status, None);
    assert!(rx.received().is_empty());
}

#[tokio::test]
async fn quota_crossing_80_and_100_percent_and_a_lost_host_are_announced() {
    let rx = Receiver::start();
    let w = world_with(|c| {
        c.webhooks_allow_private_networks = true;
        c.webhook_retry_seconds = 0.2;
    })
    .await;
    let t = w.tenant.to_string();
    let (ann, boss) = w.ann_and_boss().await;
    w.set_policy(&boss, "5", "").await;
    w.fleet
        .call(
            "set_quota",
            &[
                ("tenant_id", &t),
                ("vcpus", "100"),
                ("memory_gib", "100"),
                ("disk_gib", "1000"),
                ("vms", "5"),
            ],
        )
        .await
        .unwrap();
    add(
        &boss,
        &t,
        &format!("{}/ok-quota", rx.base),
        &["quota.threshold"],
    )
    .await
    .unwrap();
    add(
        &w.fleet,
        "fleet",
        &format!("{}/ok-hosts", rx.base),
        &["host.lost", "host.back"],
    )
    .await
    .unwrap();

    // 3 of 5 VMs: nothing; 4 of 5: 80 %; 5 of 5: 100 %.
    for (count, prefix) in [("3", "a"), ("1", "b"), ("1", "c")] {
        let id = w.submit(&ann, "small", count, prefix).await.unwrap();
        w.wait_for(&ann, &id.to_string(), RequestState::Fulfilled)
            .await;
    }
    rx.wait("two quota events", |r| r.at("/ok-quota").len() >= 2)
        .await;
    let events: Vec<(String, i64)> = rx
        .at("/ok-quota")
        .iter()
        .map(|r| {
            let b = body(r);
            (
                b["data"]["resource"].as_str().unwrap().to_string(),
                b["data"]["percent"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(events, [("VMs".to_string(), 80), ("VMs".to_string(), 100)]);
    let told: Vec<Notification> = boss.call_as("my_notifications", &[]).await.unwrap();
    let titles: Vec<&str> = told
        .iter()
        .filter(|n| n.kind == NotificationKind::QuotaThreshold)
        .map(|n| n.title.as_str())
        .collect();
    assert_eq!(
        titles,
        ["Acme: VMs quota at 100 %", "Acme: VMs quota at 80 %"]
    );
    assert!(told
        .iter()
        .all(|n| n.kind != NotificationKind::QuotaThreshold
            || n.link == format!("/tenants/{t}/quotas")));
    let ann_told: Vec<Notification> = ann.call_as("my_notifications", &[]).await.unwrap();
    assert!(ann_told
        .iter()
        .all(|n| n.kind != NotificationKind::QuotaThreshold));

    // A host's state going lost and back (as its actor writes it) tells the fleet admins and
    // the fleet-wide endpoints, once each.
    sqlx::query(
        "UPDATE hosts SET state = 'lost', state_reason = 'connection refused' WHERE id = $1::uuid",
    )
    .bind(&w.host)
    .execute(&w.app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE hosts SET state = 'connected', state_reason = NULL WHERE id = $1::uuid")
        .bind(&w.host)
        .execute(&w.app.db)
        .await
        .unwrap();
    rx.wait("host lost and back", |r| r.at("/ok-hosts").len() >= 2)
        .await;
    let types: Vec<String> = rx
        .at("/ok-hosts")
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["host.lost", "host.back"]);
    let fleet_told: Vec<Notification> = w.fleet.call_as("my_notifications", &[]).await.unwrap();
    let kinds: Vec<NotificationKind> = fleet_told.iter().map(|n| n.kind).collect();
    assert!(
        kinds.contains(&NotificationKind::HostLost) && kinds.contains(&NotificationKind::HostBack),
        "{kinds:?}"
    );
    assert!(fleet_told
        .iter()
        .any(|n| n.title == "Host hv1 is lost" && n.body == "connection refused"));
}
