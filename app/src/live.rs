//! Live updates: the server pushes domain state changes and request progress over
//! server-sent events (`/live`), scoped to what the viewer may see; pages refetch when one
//! concerns them.
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl LiveEvent {
    /// Events may have been missed (a slow page, or the server's listener reconnected):
    /// every subscriber refetches what it shows.
    pub fn lagged() -> LiveEvent {
        LiveEvent {
            kind: "lagged".into(),
            ..Default::default()
        }
    }

    pub fn is_lagged(&self) -> bool {
        self.kind == "lagged"
    }
}

/// A signal that changes whenever an event for which `wanted` says yes arrives, or events may
/// have been missed (in the browser; on the server it never changes). All of a page's
/// subscribers (the page, the navigation's badge) share one `/live` stream.
pub fn use_live(wanted: impl Fn(&LiveEvent) -> bool + Send + Sync + 'static) -> ReadSignal<u32> {
    let (tick, set_tick) = signal(0u32);
    #[cfg(feature = "hydrate")]
    {
        let id = stream::subscribe(Box::new(move |event: &LiveEvent| {
            if event.is_lagged() || wanted(event) {
                set_tick.try_update(|t| *t = t.wrapping_add(1));
            }
        }));
        on_cleanup(move || stream::unsubscribe(id));
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (wanted, set_tick);
    tick
}

/// A signal that ticks every `ms` in the browser (never on the server), for pages that keep
/// themselves current.
pub fn ticker(ms: u64) -> ReadSignal<u32> {
    let (tick, set_tick) = signal(0u32);
    Effect::new(move |_| {
        if let Ok(handle) = set_interval_with_handle(
            move || set_tick.update(|t| *t = t.wrapping_add(1)),
            std::time::Duration::from_millis(ms),
        ) {
            on_cleanup(move || handle.clear());
        }
    });
    tick
}

/// The browser's one `EventSource` on `/live`, open while anything on the page listens.
#[cfg(feature = "hydrate")]
mod stream {
    use super::LiveEvent;
    use std::cell::{Cell, RefCell};
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;

    type Subscriber = Box<dyn Fn(&LiveEvent)>;
    type Source = (
        web_sys::EventSource,
        Closure<dyn FnMut(web_sys::MessageEvent)>,
    );

    thread_local! {
        static SUBSCRIBERS: RefCell<Vec<(u64, std::rc::Rc<Subscriber>)>> = const { RefCell::new(Vec::new()) };
        static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }

    pub fn subscribe(f: Subscriber) -> u64 {
        let id = NEXT.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        SUBSCRIBERS.with(|s| s.borrow_mut().push((id, std::rc::Rc::new(f))));
        SOURCE.with(|source| {
            if source.borrow().is_some() {
                return;
            }
            let Ok(es) = web_sys::EventSource::new("/live") else {
                return;
            };
            let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
                move |ev: web_sys::MessageEvent| {
                    let Some(text) = ev.data().as_string() else {
                        return;
                    };
                    let Ok(event) = serde_json::from_str::<LiveEvent>(&text) else {
                        return;
                    };
                    // Copied out first: a subscriber may (un)subscribe while it runs.
                    let subscribers: Vec<_> =
                        SUBSCRIBERS.with(|s| s.borrow().iter().map(|(_, f)| f.clone()).collect());
                    for f in subscribers {
                        f(&event);
                    }
                },
            );
            es.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            *source.borrow_mut() = Some((es, on_message));
        });
        id
    }

    pub fn unsubscribe(id: u64) {
        let empty = SUBSCRIBERS.with(|s| {
            let mut s = s.borrow_mut();
            s.retain(|(i, _)| *i != id);
            s.is_empty()
        });
        if empty {
            if let Some((es, _)) = SOURCE.with(|source| source.borrow_mut().take()) {
                es.close();
            }
        }
    }
}
