//! Two-factor sign-in: the code step of signing in, setting up an authenticator app (on the
//! account page, or on its own page when a tenant or the fleet requires it), and the policy
//! switch for tenant and fleet admins.
use crate::components::form::{action_error, FieldMessage, FormMessage};
use crate::shell::use_actor;
use crate::two_factor::{
    my_two_factor, two_factor_policy, ConfirmTwoFactor, DisableTwoFactor, LoginCode,
    NewRecoveryCodes, SetTwoFactorPolicy, StartTwoFactor,
};
use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Redirect;
use uuid::Uuid;

/// `/login/code`: the second step of signing in.
#[component]
pub fn LoginCodePage() -> impl IntoView {
    let submit = ServerAction::<LoginCode>::new();
    let error = action_error(submit);
    let query = leptos_router::hooks::use_query_map();
    let next = move || query.with_untracked(|q| q.get("next").unwrap_or_default());
    view! {
        <Title text="Sign-in code · Concierge"/>
        <section class="card narrow login">
            <h1>"Enter your code"</h1>
            <p class="muted">"Your password was right. Open your authenticator app and enter the 6-digit code it shows for Concierge."</p>
            <ActionForm action=submit attr:class="form" attr:id="login-code">
                <input type="hidden" name="next" value=next()/>
                <FormMessage error/>
                <label for="code">"Code"</label>
                <input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code"
                    required autofocus aria-describedby="code-help code-error" maxlength="64" spellcheck="false"/>
                <p class="muted small" id="code-help">"Lost your device? Enter one of your recovery codes instead (each works once)."</p>
                <FieldMessage error field="code"/>
                <button type="submit" class="primary" disabled=move || submit.pending().get()>"Sign in"</button>
            </ActionForm>
            <p class="small"><a href="/login">"Start again with your password"</a></p>
        </section>
    }
}

/// `/two-factor`: the one page open to someone who must set up a second factor first.
#[component]
pub fn TwoFactorPage() -> impl IntoView {
    let actor = use_actor();
    view! {
        <Title text="Two-factor sign-in · Concierge"/>
        <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match actor.await {
                    Ok(Some(a)) if a.must_change_password => view! { <Redirect path="/password"/> }.into_any(),
                    Ok(Some(a)) => view! {
                        <h1>"Two-factor sign-in"</h1>
                        {a.must_enrol_two_factor.then(|| view! {
                            <p class="notice warn" role="status">"Your organisation requires a second factor. Set up an authenticator app to continue."</p>
                        })}
                        <TwoFactorSection/>
                    }.into_any(),
                    Ok(None) => view! { <Redirect path="/login?next=%2Ftwo-factor"/> }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

/// Status, setup, recovery codes and switching off.
#[component]
pub fn TwoFactorSection() -> impl IntoView {
    let start = ServerAction::<StartTwoFactor>::new();
    let confirm = ServerAction::<ConfirmTwoFactor>::new();
    let disable = ServerAction::<DisableTwoFactor>::new();
    let renew = ServerAction::<NewRecoveryCodes>::new();
    let (start_error, confirm_error) = (action_error(start), action_error(confirm));
    let (disable_error, renew_error) = (action_error(disable), action_error(renew));
    let status = Resource::new(
        move || {
            (
                confirm.version().get(),
                disable.version().get(),
                renew.version().get(),
            )
        },
        |_| my_two_factor(),
    );
    let enrolled_codes = move || {
        confirm
            .value()
            .get()
            .and_then(|r| r.ok())
            .or_else(|| renew.value().get().and_then(|r| r.ok()))
    };
    view! {
        <section class="card" id="two-factor" aria-labelledby="two-factor-title">
            <h2 id="two-factor-title">"Two-factor sign-in"</h2>
            {move || enrolled_codes().map(|c| view! {
                <div class="notice ok recovery-codes" role="status" id="recovery-codes">
                    <p><strong>"Save these recovery codes now."</strong>" Each signs you in once if you lose your device; they are not shown again."</p>
                    <ul class="codes">{c.codes.into_iter().map(|code| view! { <li><code>{code}</code></li> }).collect_view()}</ul>
                    <p class="small">"When you are done, "<a href="/">"continue to Concierge"</a>"."</p>
                </div>
            })}
            <Suspense fallback=|| view! { <p class="muted">"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let s = match status.await {
                        Ok(s) => s,
                        Err(e) => return view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                    };
                    let required = (!s.required_by.is_empty())
                        .then(|| format!("Required by {}.", s.required_by.join(", ")));
                    if s.enabled {
                        view! {
                            <p id="two-factor-state"><span class="badge ok">"On"</span>" Signing in asks for a code from your authenticator app. "
                                {format!("{} recovery code{} left.", s.recovery_codes_left, if s.recovery_codes_left == 1 { "" } else { "s" })}
                                " " {required.clone()}</p>
                            <div class="grid-2">
                                <ActionForm action=renew attr:class="form" attr:id="renew-codes">
                                    <FormMessage error=renew_error/>
                                    <label for="renew-code">"New recovery codes: current code"</label>
                                    <input id="renew-code" name="code" inputmode="numeric" autocomplete="one-time-code" required/>
                                    <FieldMessage error=renew_error field="code"/>
                                    <button type="submit">"Make new recovery codes"</button>
                                </ActionForm>
                                {required.is_none().then(|| view! {
                                    <ActionForm action=disable attr:class="form" attr:id="disable-two-factor">
                                        <FormMessage error=disable_error/>
                                        <label for="disable-code">"Turn off: current code"</label>
                                        <input id="disable-code" name="code" inputmode="numeric" autocomplete="one-time-code" required/>
                                        <FieldMessage error=disable_error field="code"/>
                                        <button type="submit" class="danger">"Turn off two-factor sign-in"</button>
                                    </ActionForm>
                                })}
                            </div>
                        }.into_any()
                    } else {
                        view! {
                            <p id="two-factor-state"><span class="badge muted">"Off"</span>" Signing in asks for your password only. " {required}</p>
                            <ActionForm action=start attr:class="inline-form" attr:id="start-two-factor">
                                <FormMessage error=start_error/>
                                <button type="submit" class="primary">"Set up an authenticator app"</button>
                            </ActionForm>
                        }.into_any()
                    }
                })}
            </Suspense>
            {move || start.value().get().and_then(|r| r.ok()).filter(|_| enrolled_codes().is_none()).map(|e| view! {
                <div class="enrolment" id="enrolment">
                    <p>"Scan this code with your authenticator app (or type the key in), then enter the 6-digit code it shows."</p>
                    <div class="qr" role="img" aria-label="QR code of the key" inner_html=e.qr_svg.clone()></div>
                    <p class="small">"Key: "<code class="secret" id="totp-secret">{e.secret.clone()}</code></p>
                    <ActionForm action=confirm attr:class="form" attr:id="confirm-two-factor">
                        <FormMessage error=confirm_error/>
                        <label for="confirm-code">"Code from the app"</label>
                        <input id="confirm-code" name="code" inputmode="numeric" autocomplete="one-time-code" required
                            aria-describedby="code-error"/>
                        <FieldMessage error=confirm_error field="code"/>
                        <button type="submit" class="primary">"Turn on"</button>
                    </ActionForm>
                </div>
            })}
        </section>
    }
}

/// The switch that requires a second factor of a tenant's members (`tenant`) or of everyone.
#[component]
pub fn TwoFactorPolicy(tenant: Option<Uuid>) -> impl IntoView {
    let set = ServerAction::<SetTwoFactorPolicy>::new();
    let error = action_error(set);
    let current = Resource::new(
        move || set.version().get(),
        move |_| two_factor_policy(tenant),
    );
    let who = if tenant.is_some() {
        "this tenant's members"
    } else {
        "everyone, in every tenant"
    };
    view! {
        <section class="card" id="two-factor-policy" aria-labelledby="two-factor-policy-title">
            <h2 id="two-factor-policy-title">"Two-factor sign-in"</h2>
            <Suspense fallback=|| ()>
                {move || Suspend::new(async move {
                    let on = current.await.unwrap_or(false);
                    view! {
                        <ActionForm action=set attr:class="form inline-form">
                            <FormMessage error/>
                            <input type="hidden" name="tenant_id" value=tenant.map(|t| t.to_string()).unwrap_or_default()/>
                            <label class="check">
                                <input type="checkbox" name="required" value="on" checked=on/>
                                {format!(" Require a second factor of {who}")}
                            </label>
                            <FieldMessage error field="required"/>
                            <p class="muted small">"Anyone without one is asked to set up an authenticator app at their next request, and can do nothing else until they have."</p>
                            <button type="submit">"Save"</button>
                        </ActionForm>
                        {move || set.value().get().and_then(|r| r.ok()).map(|on| view! {
                            <p class="notice ok" role="status">{if on { "A second factor is now required." } else { "A second factor is no longer required." }}</p>
                        })}
                    }
                })}
            </Suspense>
        </section>
    }
}
