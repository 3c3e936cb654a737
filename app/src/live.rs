//! Live updates: the server pushes domain state changes and request progress over
//! server-sent events (`/live`), scoped to what the viewer may see; pages refetch when one
//! concerns them.
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// domain or request.
    pub kind: String,
    #[serde(default)]
    pub host_id: Option<Uuid>,
    #[serde(default)]
    pub uuid: Option<Uuid>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<Uuid>,
    #[serde(default)]
    pub owner_id: Option<Uuid>,
    #[serde(default)]
    pub request_id: Option<Uuid>,
    #[serde(default)]
    pub requester_id: Option<Uuid>,
}

/// A signal that changes whenever an event for which `wanted` says yes arrives (in the
/// browser; on the server it never changes).
pub fn use_live(wanted: impl Fn(&LiveEvent) -> bool + Send + Sync + 'static) -> ReadSignal<u32> {
    let (tick, set_tick) = signal(0u32);
    #[cfg(feature = "hydrate")]
    {
        use wasm_bindgen::closure::Closure;
        use wasm_bindgen::JsCast;
        let wanted = std::sync::Arc::new(wanted);
        Effect::new(move |_| {
            let Ok(source) = web_sys::EventSource::new("/live") else {
                return;
            };
            let wanted = wanted.clone();
            let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
                move |ev: web_sys::MessageEvent| {
                    let Some(text) = ev.data().as_string() else {
                        return;
                    };
                    if let Ok(event) = serde_json::from_str::<LiveEvent>(&text) {
                        if wanted(&event) {
                            set_tick.update(|t| *t = t.wrapping_add(1));
                        }
                    }
                },
            );
            source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            let source = send_wrapper::SendWrapper::new((source, on_message));
            on_cleanup(move || source.0.close());
        });
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (wanted, set_tick);
    tick
}
