//! Concierge's browser-facing crate: pages, components, DTOs, server functions and the
//! ssr-only seam (`seam`) that the backend in `server/` implements.
#![recursion_limit = "256"]

pub mod account;
pub mod audit;
pub mod components;
pub mod console;
pub mod error;
pub mod fleet;
pub mod images;
pub mod live;
pub mod pages;
pub mod provisioning;
pub mod reports;
#[cfg(feature = "ssr")]
pub mod seam;
pub mod states;
pub mod tenant;
pub mod url;
pub mod user;

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
}

impl<T> Page<T> {
    pub fn pages(&self) -> u32 {
        let per = i64::from(self.per_page.max(1));
        ((self.total + per - 1) / per).max(1) as u32
    }
}
