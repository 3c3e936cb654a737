//! Concierge's browser-facing crate: pages, components, DTOs, server functions and the
//! ssr-only seam (`seam`) that the backend in `server/` implements.
#![recursion_limit = "256"]

pub mod account;
pub mod alerts;
pub mod audit;
pub mod components;
pub mod console;
pub mod error;
pub mod fleet;
pub mod images;
pub mod live;
pub mod notifications;
pub mod pages;
pub mod provisioning;
pub mod reclamation;
pub mod reports;
#[cfg(feature = "ssr")]
pub mod seam;
pub mod states;
pub mod tenant;
pub mod two_factor;
pub mod url;
pub mod user;
pub mod webhooks;

mod shell;
pub use shell::{shell, App};

#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(App);
}

/// One page of a server-side paginated list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 1-based.
    pub page: u32,
    pub per_page: u32,
    pub total: i64,
    /// Where the previous and the next page start, for lists paged by keyset (see `Place`).
    #[serde(default)]
    pub before: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

/// Which page of a list to show: by number, or, when the reader followed Previous or Next,
/// just before or after the rows of the page they came from (the server's opaque cursors, so
/// a deep page costs what the first does; `page` then only numbers it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Place {
    pub page: u32,
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub before: String,
}

impl<T> Page<T> {
    pub fn pages(&self) -> u32 {
        Self::count(self.total, self.per_page)
    }

    /// How many pages `total` rows fill, `per_page` to a page (at least one, empty).
    pub fn count(total: i64, per_page: u32) -> u32 {
        let per = i64::from(per_page.max(1));
        ((total + per - 1) / per).max(1) as u32
    }
}
