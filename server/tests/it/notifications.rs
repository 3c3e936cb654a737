//! Notifications: approvers are told a request waits for them, requesters that it was decided
//! and is ready, each in the app and by e-mail through a real SMTP server on loopback (Debian's
//! `python3-aiosmtpd`, writing a Maildir), as each person chose.

use crate::common::*;
use crate::provisioning::world_with;
use app::notifications::{Notification, NotificationKind, Preference};
use app::states::RequestState;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// aiosmtpd on a free loopback port, keeping every message it accepts in a Maildir.
struct Smtp {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Smtp {
    fn start() -> Smtp {
        let dir = std::env::temp_dir().join(format!("concierge-smtp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.join("maildir"))
            .stdout(std::fs::File::create(dir.join("smtpd.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("smtpd.err")).unwrap())
            .spawn()
            .expect("start aiosmtpd (scripts/test installs python3-aiosmtpd)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "aiosmtpd did not listen: {}",
                std::fs::read_to_string(dir.join("smtpd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp { child, dir, port }
    }

    /// Every message received so far, parsed by Python's `email` package (an implementation
    /// of the format independent of the one that wrote it): headers, text and HTML parts.
    fn messages(&self) -> Vec<Value> {
        let new = self.dir.join("maildir/new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| {
                let out = std::process::Command::new("/usr/bin/python3")
                    .arg("-c")
                    .arg(PARSE)
                    .arg(f)
                    .output()
                    .expect("python3");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                serde_json::from_slice(&out.stdout).unwrap()
            })
            .collect()
    }

    /// Waits until messages to `to` number `n` (at most 20 s), and returns them.
    async fn wait_for(&self, to: &str, n: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let mine: Vec<Value> = self
                .messages()
                .into_iter()
                .filter(|m| m["to"].as_str().unwrap_or_default().contains(to))
                .collect();
            if mine.len() >= n {
                return mine;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{n} messages to {to} never came: {:#?}",
                self.messages()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PARSE: &str = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
text = m.get_body(("plain",))
html = m.get_body(("html",))
print(json.dumps({
    "from": str(m["From"]), "to": str(m["To"]), "subject": str(m["Subject"]),
    "message_id": str(m["Message-ID"]), "date": str(m["Date"]),
    "text": text.get_content() if text else None, "html": html.get_content() if html else None,
}))
"#;

async fn notifications(c: &Client) -> Vec<Notification> {
    c.call_as("my_notifications", &[]).await.unwrap()
}

async fn unread(c: &Client) -> u32 {
    c.call_as("unread_notifications", &[]).await.unwrap()
}

#[tokio::test]
async fn approvers_are_told_a_request_waits_and_the_requester_is_mailed_its_outcome() {
    let smtp = Smtp::start();
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let w = world_with(|c| {
        c.smtp_url = Some(url.parse().unwrap());
        c.mail_from = "Concierge <portal@example.com>".into();
    })
    .await;
    let t = w.tenant;
    let (_, ann) = w
        .app
        .signed_in("ann@example.com", Some((t, "requester")))
        .await;
    let (_, a1) = w
        .app
        .signed_in("a1@example.com", Some((t, "approver")))
        .await;
    let (_, a2) = w
        .app
        .signed_in("a2@example.com", Some((t, "approver")))
        .await;
    let (_, boss) = w
        .app
        .signed_in("boss@example.com", Some((t, "tenant_admin")))
        .await;
    // a2 wants waiting approvals in the app only.
    let email_kinds: Vec<&str> = NotificationKind::ALL
        .iter()
        .filter(|k| **k != NotificationKind::ApprovalWaiting)
        .map(|k| k.as_str())
        .collect();
    let mut form: Vec<(&str, &str)> = NotificationKind::ALL
        .iter()
        .map(|k| ("in_app[]", k.as_str()))
        .collect();
    form.extend(email_kinds.iter().map(|k| ("email[]", *k)));
    a2.call("set_notification_preferences", &form)
        .await
        .unwrap();
    let prefs: Vec<Preference> = a2.call_as("notification_preferences", &[]).await.unwrap();
    let waiting_pref = prefs
        .iter()
        .find(|p| p.kind == NotificationKind::ApprovalWaiting)
        .unwrap();
    assert!(waiting_pref.in_app && !waiting_pref.email);
    // A kind that does not exist is refused, naming the field.
    assert_field_error(
        &a2.call("set_notification_preferences", &[("email[]", "everything")])
            .await,
        "email",
    );

    // Level 1: both named approvers; level 2: any approver. Nothing is auto-approved.
    w.set_policy(&boss, "0", "all: a1@example.com, a2@example.com\nany:")
        .await;
    let id = w.submit(&ann, "small", "1", "web").await.unwrap();
    let rid = id.to_string();
    w.wait_for(&ann, &rid, RequestState::PendingApproval).await;

    // The named approvers are told in the app; the tenant admin (not on level 1) is not.
    for c in [&a1, &a2] {
        let n = notifications(c).await;
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].kind, NotificationKind::ApprovalWaiting);
        assert_eq!(n[0].link, "/approvals");
        assert!(n[0].title.contains("web"), "{}", n[0].title);
        assert_eq!(unread(c).await, 1);
    }
    assert!(notifications(&boss).await.is_empty());
    assert!(notifications(&ann).await.is_empty());
    // a1 is mailed (everything on by default); a2 chose not to be.
    let mails = smtp.wait_for("a1@example.com", 1).await;
    assert!(mails[0]["subject"]
        .as_str()
        .unwrap()
        .starts_with("Waiting for your approval: web"));
    assert_eq!(mails[0]["from"], "Concierge <portal@example.com>");
    assert!(mails[0]["text"]
        .as_str()
        .unwrap()
        .contains("http://127.0.0.1:3000/approvals"));

    // Nobody marks another's notification read; marking your own clears your count.
    let a1_note = notifications(&a1).await[0].id.to_string();
    let refused = a2
        .call("mark_notifications_read", &[("id", &a1_note)])
        .await;
    assert!(matches!(refused, Err((404, _))), "{refused:?}");
    assert_eq!(unread(&a1).await, 1);
    a1.call("mark_notifications_read", &[("id", &a1_note)])
        .await
        .unwrap();
    assert_eq!(unread(&a1).await, 0);
    assert!(notifications(&a1).await[0].read);

    // Both approve level 1: level 2 waits for any approver (and tenant admin).
    for c in [&a1, &a2] {
        c.call("decide_request", &[("id", &rid), ("decision", "approve")])
            .await
            .unwrap();
    }
    let boss_notes = notifications(&boss).await;
    assert_eq!(boss_notes.len(), 1, "{boss_notes:?}");
    assert_eq!(boss_notes[0].kind, NotificationKind::ApprovalWaiting);
    boss.call("decide_request", &[("id", &rid), ("decision", "approve")])
        .await
        .unwrap();

    // Ann is told it was approved and, once her VM runs, that it is ready: in the app and by
    // mail, each linking to the request.
    w.wait_for(&ann, &rid, RequestState::Fulfilled).await;
    let mails = smtp.wait_for("ann@example.com", 2).await;
    let subjects: Vec<&str> = mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert!(
        subjects.contains(&"Approved: web (Debian 12)"),
        "{subjects:?}"
    );
    assert!(subjects.contains(&"Ready: web (Debian 12)"), "{subjects:?}");
    let link = format!("http://127.0.0.1:3000/requests/{id}");
    for m in &mails {
        assert_eq!(m["to"], "ann@example.com");
        assert!(m["text"].as_str().unwrap().contains(&link), "{m:#?}");
        assert!(m["html"]
            .as_str()
            .unwrap()
            .contains(&format!("href=\"{link}\"")));
        assert!(m["message_id"].as_str().unwrap().ends_with("@example.com>"));
        assert!(!m["date"].as_str().unwrap().is_empty());
    }
    let ann_notes = notifications(&ann).await;
    let kinds: Vec<NotificationKind> = ann_notes.iter().map(|n| n.kind).collect();
    assert!(
        kinds.contains(&NotificationKind::RequestApproved),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&NotificationKind::RequestFulfilled),
        "{kinds:?}"
    );
    assert_eq!(unread(&ann).await, 2);
    ann.call("mark_notifications_read", &[]).await.unwrap();
    assert_eq!(unread(&ann).await, 0);

    // Each sent mail is recorded as sent, and a2's approval notice sent none.
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.email, n.email FROM notifications n JOIN users u ON u.id = n.user_id
         WHERE n.kind = 'approval_waiting' ORDER BY u.email",
    )
    .fetch_all(&w.app.db)
    .await
    .unwrap();
    assert!(
        states.contains(&("a1@example.com".into(), "sent".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&("a2@example.com".into(), "none".into())),
        "{states:?}"
    );
}
