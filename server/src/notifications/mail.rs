//! Notification e-mail: the `mail` job sends one notification's message through SMTP
//! (`lettre`, rustls), plain text and HTML from askama templates, each linking to the object.
//! At least once: a runner killed after the server accepted the message and before the row
//! says "sent" sends it again, with the same `Message-ID` so mail clients fold the two.
use crate::platform::db::{self, Scope};
use crate::platform::jobs::{Job, Outcome};
use askama::Template;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use uuid::Uuid;

/// The SMTP server's URL as configured; shown without its password.
#[derive(Clone)]
pub struct SmtpUrl(String);

impl std::str::FromStr for SmtpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AsyncSmtpTransport::<Tokio1Executor>::from_url(s)
            .map_err(|e| format!("not an SMTP URL (smtp://host:port or smtps://…): {e}"))?;
        Ok(SmtpUrl(s.to_string()))
    }
}

impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of logs and error reports.
        let shown = match (self.0.find("://"), self.0.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://…@{}", &self.0[..s], &self.0[at + 1..]),
            _ => self.0.clone(),
        };
        f.write_str(&shown)
    }
}

pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The portal's URL, for the links.
    public_url: String,
    /// The domain of `Message-ID`s.
    domain: String,
}

impl Mailer {
    pub fn new(url: &SmtpUrl, from: &str, public_url: &str) -> anyhow::Result<Mailer> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url.0)
            .map_err(|e| anyhow::anyhow!("--smtp-url: {e}"))?
            .build();
        let from: Mailbox = from
            .parse()
            .map_err(|e| anyhow::anyhow!("--mail-from {from:?}: {e}"))?;
        let domain = from.email.domain().to_string();
        Ok(Mailer {
            transport,
            from,
            public_url: public_url.trim_end_matches('/').to_string(),
            domain,
        })
    }
}

#[derive(Template)]
#[template(path = "mail/notification.txt")]
struct Text<'a> {
    name: &'a str,
    title: &'a str,
    body: &'a str,
    url: &'a str,
    settings: &'a str,
}

#[derive(Template)]
#[template(path = "mail/notification.html")]
struct Html<'a> {
    name: &'a str,
    title: &'a str,
    body: &'a str,
    url: &'a str,
    settings: &'a str,
}

#[derive(sqlx::FromRow)]
struct Queued {
    email: String,
    title: String,
    body: String,
    link: String,
    to_email: String,
    to_name: String,
}

/// Sends the e-mail of notification `job.key`, once it is still queued. Without an SMTP
/// server configured it is dropped (the in-app notification stays).
pub async fn deliver(pool: &PgPool, mailer: Option<&Mailer>, job: &Job) -> Result<(), Outcome> {
    let id = job.key;
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    let row: Option<Queued> = sqlx::query_as(
        "SELECT n.email, n.title, n.body, n.link, u.email AS to_email, u.display_name AS to_name
         FROM notifications n JOIN users u ON u.id = n.user_id WHERE n.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    db::done(tx);
    let Some(n) = row.filter(|n| n.email == "queued") else {
        return Ok(());
    };
    let Some(mailer) = mailer else {
        mark(pool, id, "none").await?;
        return Ok(());
    };
    let message = compose(mailer, id, &n).map_err(Outcome::Fail)?;
    match mailer.transport.send(message).await {
        Ok(_) => {
            mark(pool, id, "sent").await?;
            Ok(())
        }
        // 5xx: the server will not take it however often we ask (a bad address).
        Err(e) if e.is_permanent() => Err(Outcome::Fail(format!("the mail server refused: {e}"))),
        Err(e) => Err(Outcome::Retry(format!("sending mail: {e}"))),
    }
}

/// The message for notification `id` to its recipient.
fn compose(mailer: &Mailer, id: Uuid, n: &Queued) -> Result<Message, String> {
    let address: lettre::Address = n
        .to_email
        .parse()
        .map_err(|e| format!("the recipient's address {:?}: {e}", n.to_email))?;
    // The display name as a name only when it is one (accounts start with their address).
    let shown = (!n.to_name.is_empty() && n.to_name != n.to_email).then(|| n.to_name.clone());
    let to = Mailbox::new(shown, address);
    let url = format!("{}{}", mailer.public_url, n.link);
    let settings = format!("{}/account#notifications", mailer.public_url);
    let name = if n.to_name.is_empty() {
        n.to_email.as_str()
    } else {
        n.to_name.as_str()
    };
    let text = Text {
        name,
        title: &n.title,
        body: &n.body,
        url: &url,
        settings: &settings,
    }
    .render()
    .map_err(|e| e.to_string())?;
    let html = Html {
        name,
        title: &n.title,
        body: &n.body,
        url: &url,
        settings: &settings,
    }
    .render()
    .map_err(|e| e.to_string())?;
    Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(&n.title)
        .message_id(Some(format!("<{id}@{}>", mailer.domain)))
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| e.to_string())
}

async fn mark(pool: &PgPool, id: Uuid, state: &str) -> Result<(), Outcome> {
    let mut tx = db::begin(pool, Scope::fleet()).await?;
    sqlx::query("UPDATE notifications SET email = $2 WHERE id = $1")
        .bind(id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    tx.commit()
        .await
        .map_err(crate::platform::error::Error::from)?;
    Ok(())
}

/// A mail job that gave up: the notification says so.
pub async fn abandoned(pool: &PgPool, job: &Job, error: &str) {
    tracing::warn!(notification = %job.key, error, "notification e-mail not sent");
    if let Err(e) = mark(pool, job.key, "failed").await {
        tracing::warn!(error = ?e, "recording an unsent e-mail");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smtp_password_is_not_shown() {
        let url: SmtpUrl = "smtp://mailer:s3cret@mail.example.com:587?tls=required"
            .parse()
            .unwrap();
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("mail.example.com:587"), "{shown}");
        assert!("http://x".parse::<SmtpUrl>().is_err());
    }
}
