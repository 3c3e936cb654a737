//! Browser consoles of a VM: a ticket from an audited POST, then a WebSocket to `/console/ws`.
use crate::error::AppError;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// serial (the guest's first serial port, through libvirt's console stream) or graphical
/// (its VNC display, on a UNIX socket of the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleKind {
    Serial,
    Graphical,
}

impl ConsoleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleKind::Serial => "serial",
            ConsoleKind::Graphical => "graphical",
        }
    }

    pub fn parse(s: &str) -> Result<Self, AppError> {
        match s {
            "serial" => Ok(ConsoleKind::Serial),
            "graphical" => Ok(ConsoleKind::Graphical),
            _ => Err(AppError::field(
                "kind",
                "Choose the serial or the graphical console.",
            )),
        }
    }
}

/// A single-use ticket: open `url` (a WebSocket on this origin) within 30 seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleTicket {
    pub url: String,
    pub expires_in_seconds: u32,
}

#[server(prefix = "/api", endpoint = "open_console")]
pub async fn open_console(
    host_id: Uuid,
    uuid: Uuid,
    kind: String,
) -> Result<ConsoleTicket, AppError> {
    let req = crate::seam::request()?;
    crate::seam::reply(
        crate::seam::backend()?
            .consoles
            .ticket(&req, host_id, uuid, &kind)
            .await,
    )
}
