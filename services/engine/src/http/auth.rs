//! Authentication of HTTP requests: one middleware in front of every route
//! ([`authenticate`]), the [`Caller`] extractor handlers use to check
//! scopes, and the browser session routes (`/api/v1/session`).
//!
//! Every request outside [`OPEN_ROUTES`] and the dashboard's static files
//! needs credentials: `Authorization: Bearer SECRET` or the session cookie
//! [`SESSION_COOKIE`] (which is how the dashboard, its downloads and its SSE
//! stream authenticate: `EventSource` cannot send a header, and a secret in
//! a URL would end up in logs and history). The middleware removes the
//! `Authorization` and `Cookie` headers once read, so nothing after it can
//! log them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditEvent, SignInMethod, SignInOutcome, Via as AuditVia};
use crate::auth::{Action, Authenticator, Principal, Unauthorized};

use super::error::ApiError;
use super::state::AppState;

/// Routes answered without credentials: they reveal no sensor data.
/// `/readyz` says only whether the store takes writes, which a load balancer
/// must learn without a token. A future `/metrics` needs a token (any valid
/// one) unless added here; `/api/v1/session` is how a browser turns a token
/// into a session. Everything not under `/api/` is the dashboard's static
/// files, also open (they hold no data).
pub const OPEN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("HEAD", "/healthz"),
    ("GET", "/readyz"),
    ("HEAD", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/session"),
];

/// Path prefixes only an `admin` token may use.
pub const ADMIN_PREFIXES: &[&str] = &["/api/v1/tokens", "/api/v1/admin/", "/api/v1/audit"];

/// The browser session's cookie.
pub const SESSION_COOKIE: &str = "engine_session";

/// What a route asks of its caller: the decision every route must make (see
/// [`super::route_specs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed.
    Open,
    /// Any valid token (API description, who am I).
    Authenticated,
    /// An action on the sensors the request names, checked by the handler:
    /// unreadable sensors are 404, readable ones without the action 403.
    Sensors(Action),
    /// An `admin` token.
    Admin,
}

/// Whether `method path` is answered without credentials.
pub fn is_open(method: &Method, path: &str) -> bool {
    !path.starts_with("/api/")
        || OPEN_ROUTES
            .iter()
            .any(|(m, p)| *p == path && m == &method.as_str())
}

/// How the request authenticated: the CSRF check applies to cookies only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Bearer,
    Cookie,
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

async fn credentials(
    auth: &Authenticator,
    headers: &HeaderMap,
) -> Result<(Principal, Via), Unauthorized> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Unauthorized::Malformed)?;
        let (scheme, secret) = value.split_once(' ').ok_or(Unauthorized::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthorized::Malformed);
        }
        return auth
            .authenticate_fresh(secret.trim())
            .await
            .map(|p| (p, Via::Bearer));
    }
    match session_cookie(headers) {
        Some(cookie) => auth.session(cookie).map(|p| (p, Via::Cookie)),
        None => Err(Unauthorized::Missing),
    }
}

/// A cookie-authenticated request that changes state must come from the
/// dashboard itself: `Sec-Fetch-Site` says so in every current browser;
/// older ones send `Origin`, which must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    match (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        (Some(origin), Some(host)) => {
            let origin = origin.to_str().unwrap_or("");
            let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
            Some(origin_host) == host.to_str().ok()
        }
        (Some(_), None) => false,
        // Not a browser (browsers send Origin on every cross-site POST).
        (None, _) => true,
    }
}

/// The middleware in front of every route: lets open routes through, else
/// authenticates (or, with auth off, lets everyone in as
/// [`Principal::unrestricted`]), refuses non-admins on admin routes, checks
/// cookie-authenticated state changes for cross-site origin, and hands the
/// [`Principal`] to the handler.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(audit) = state.audit.clone() else {
        return guard(state, request, next).await;
    };
    // Refusals (401, 403, 429) go to the audit trail, whoever answered them.
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let client = super::audit::Client::of(request.extensions());
    let mut response = guard(state, request, next).await;
    let principal = response.extensions_mut().remove::<Principal>();
    super::audit::record_refusal(
        &audit,
        &method,
        &path,
        client,
        principal.as_ref(),
        &response,
    );
    response
}

/// [`authenticate`] without the audit trail.
async fn guard(state: AppState, mut request: Request, next: Next) -> Response {
    if is_open(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let principal = match &state.auth {
        None => Principal::unrestricted(),
        Some(auth) => {
            let peer = peer_ip(&request);
            if let Some(limiter) = &state.auth_failures
                && limiter.blocked(peer)
            {
                return ApiError::TooManyFailures.into_response();
            }
            match credentials(auth, request.headers()).await {
                Ok((principal, via)) => {
                    let changes_state = !matches!(
                        *request.method(),
                        Method::GET | Method::HEAD | Method::OPTIONS
                    );
                    if via == Via::Cookie && changes_state && !same_origin(request.headers()) {
                        return ApiError::Forbidden(
                            "cross-site request refused: the session cookie only works from the dashboard"
                                .into(),
                        )
                        .into_response();
                    }
                    principal
                }
                Err(reason) => {
                    // A request without credentials guesses nothing (a
                    // dashboard before sign-in): not counted.
                    if let Some(limiter) = &state.auth_failures
                        && reason != Unauthorized::Missing
                    {
                        limiter.failed(peer).await;
                    }
                    return ApiError::Unauthorized(reason).into_response();
                }
            }
        }
    };
    let path = request.uri().path();
    if ADMIN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) && !principal.is_admin() {
        let mut response =
            ApiError::Forbidden("this route needs an admin token".into()).into_response();
        response.extensions_mut().insert(principal);
        return response;
    }
    let cookie = session_cookie(request.headers()).map(|c| SessionId(c.to_owned()));
    let headers = request.headers_mut();
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::COOKIE);
    if let Some(cookie) = cookie {
        request.extensions_mut().insert(cookie);
    }
    let refused_as = state.audit.is_some().then(|| principal.clone());
    request.extensions_mut().insert(principal);
    let mut response = next.run(request).await;
    // Who was refused, for the audit trail (taken off again there).
    if let Some(principal) = refused_as
        && is_refusal(response.status())
    {
        response.extensions_mut().insert(principal);
    }
    response
}

fn is_refusal(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    )
}

/// The client's address, when the server recorded it.
fn peer_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// Who is calling: put there by [`authenticate`]. A handler reached without
/// the middleware (a router assembled by hand) fails closed with 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or(ApiError::Unauthorized(Unauthorized::Missing))
    }
}

impl Caller {
    /// Read access to one sensor: an unreadable sensor is "not found".
    pub fn read(&self, sensor: &crate::model::SensorId) -> Result<(), ApiError> {
        if self.0.sees(sensor.as_str()) {
            Ok(())
        } else {
            Err(ApiError::SensorNotFound(sensor.clone()))
        }
    }

    /// Export of sensors: unreadable ones 404 (all named), readable ones
    /// without `export` 403.
    pub fn export(&self, sensors: &[crate::model::SensorId]) -> Result<(), ApiError> {
        let hidden: Vec<_> = sensors
            .iter()
            .filter(|s| !self.0.sees(s.as_str()))
            .cloned()
            .collect();
        match hidden.len() {
            0 => {}
            1 => return Err(ApiError::SensorNotFound(hidden[0].clone())),
            _ => return Err(ApiError::SensorsNotFound(hidden)),
        }
        match sensors
            .iter()
            .find(|s| !self.0.allows(Action::Export, s.as_str()))
        {
            Some(s) => Err(ApiError::Forbidden(format!(
                "this token may not export sensor {:?}",
                s.as_str()
            ))),
            None => Ok(()),
        }
    }

    /// Writing a sensor: refused with 403 whether or not it exists (a write
    /// reveals nothing about other sensors).
    pub fn write(&self, sensor: &crate::model::SensorId) -> Result<(), ApiError> {
        if self.0.allows(Action::Write, sensor.as_str()) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token may not write sensor {:?}",
                sensor.as_str()
            )))
        }
    }
}

// ---- browser sessions: /api/v1/session ----

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// Who is signed in, as the dashboard shows it.
#[derive(Serialize)]
pub struct Me {
    pub name: String,
    pub token_id: Option<String>,
    pub scopes: Vec<String>,
    pub auth: bool,
    pub can_export: bool,
    pub can_write: bool,
}

impl Me {
    pub fn of(principal: &Principal, auth: bool) -> Self {
        Self {
            name: principal.name.to_string(),
            token_id: principal.token_id.as_deref().map(str::to_owned),
            scopes: principal.scopes.iter().map(ToString::to_string).collect(),
            auth,
            can_export: principal.allows_any(Action::Export),
            can_write: principal.allows_any(Action::Write),
        }
    }
}

/// The `Set-Cookie` of a session: `HttpOnly` (scripts cannot read it),
/// `SameSite=Strict` (no cross-site request carries it), `Secure` under
/// TLS, with a lifetime.
pub fn session_set_cookie(value: &str, max_age_s: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("engine_session=; Max-Age=0"))
}

/// `response` setting the cookie of a session just opened, for
/// [`crate::auth::SESSION_TTL`]: the one way both sign-ins (a token, a
/// one-time link) hand over a session.
fn with_session(mut response: Response, cookie: &str, secure: bool) -> Response {
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_set_cookie(cookie, crate::auth::SESSION_TTL.as_secs(), secure),
    );
    response
}

/// `POST /api/v1/session` `{"token": SECRET}`: exchanges a token for a
/// session cookie.
pub async fn sign_in(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(auth) = state.auth.clone() else {
        return Ok(Json(Me::of(&Principal::unrestricted(), false)).into_response());
    };
    let peer = peer_ip(&request);
    let client = super::audit::Client::of(request.extensions());
    // Failures are refusals: rate-limited in the audit trail.
    let failed = |reason: &str| {
        if let Some(audit) = &state.audit {
            audit.refused(AuditEvent::SignIn {
                actor: Actor::of(AuditVia::Http, None, client.0),
                method: SignInMethod::Token,
                outcome: SignInOutcome::Failed,
                reason: Some(reason.to_owned()),
            });
        }
    };
    if let Some(limiter) = &state.auth_failures
        && limiter.blocked(peer)
    {
        failed("too many failed authentications from this address");
        return Err(ApiError::TooManyFailures);
    }
    if !same_origin(request.headers()) {
        failed("cross-site sign-in");
        return Err(ApiError::Forbidden("cross-site sign-in refused".into()));
    }
    let body = axum::body::to_bytes(request.into_body(), 16 * 1024)
        .await
        .map_err(|_| ApiError::InvalidParameter("the body is not a sign-in".into()))?;
    let SignIn { token } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::InvalidParameter("expected a JSON body {\"token\": \"...\"}".into())
    })?;
    if let Err(error) = auth.refresh().await {
        tracing::warn!(%error, "cannot reload the tokens");
    }
    match auth.open_session(token.trim()) {
        Ok((cookie, principal)) => {
            if let Some(audit) = &state.audit {
                audit.record(AuditEvent::SignIn {
                    actor: Actor::of(AuditVia::Http, Some(&principal), client.0),
                    method: SignInMethod::Token,
                    outcome: SignInOutcome::Ok,
                    reason: None,
                });
            }
            Ok(with_session(
                Json(Me::of(&principal, true)).into_response(),
                &cookie,
                state.secure_cookies,
            ))
        }
        Err(reason) => {
            failed(&reason.to_string());
            if let Some(limiter) = &state.auth_failures {
                limiter.failed(peer).await;
            }
            Err(ApiError::Unauthorized(reason))
        }
    }
}

/// `GET /api/v1/session`: who is signed in (or calling with a token).
pub async fn whoami(State(state): State<AppState>, Caller(principal): Caller) -> Json<Me> {
    Json(Me::of(&principal, state.auth.is_some()))
}

/// `DELETE /api/v1/session`: signs out; the cookie is cleared and the
/// session forgotten by the server.
pub async fn sign_out(
    State(state): State<AppState>,
    Caller(_): Caller,
    request: Request,
) -> Response {
    // The middleware removed the Cookie header; it kept the session id.
    if let (Some(auth), Some(SessionId(id))) =
        (&state.auth, request.extensions().get::<SessionId>())
    {
        auth.close_session(id);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_set_cookie("", 0, state.secure_cookies),
    );
    response
}

// ---- one-time sign-in links: GET /signin?code= ----

/// The path of the one-time sign-in link `engine serve` prints
/// (`http://127.0.0.1:8080/signin?code=stsi_...`).
pub const SIGN_IN_LINK_PATH: &str = "/signin";

/// Where a refused link lands: the dashboard, whose sign-in page reads this
/// parameter and says why (no cookie is set).
pub const LINK_REFUSED: &str = "/?signin=link-invalid";
/// Where a link lands when its address failed too often lately.
pub const LINK_BLOCKED: &str = "/?signin=too-many-attempts";

/// A redirect that no cache keeps and that sends no `Referer` onwards, so
/// the code of the address it answers goes nowhere else.
fn see_other(location: &'static str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The `code` of `/signin?code=...`, as sent (codes are hex, never encoded).
fn link_code(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("code="))
        .filter(|code| !code.is_empty())
}

/// `GET /signin?code=...`: exchanges a one-time sign-in code (printed by
/// `engine serve`, see [`crate::auth::Authenticator::issue_sign_in_code`])
/// for a session cookie and answers 303 to `/`, so nothing reusable stays
/// in the address bar or the history: the code works once, for minutes.
/// A used, expired or unknown code lands on the dashboard's sign-in page
/// ([`LINK_REFUSED`]) without a cookie. The request log never shows the
/// query of this path (see `crate::http::loggable_uri`).
pub async fn sign_in_link(State(state): State<AppState>, request: Request) -> Response {
    let Some(auth) = state.auth.clone() else {
        // Auth off: there is nothing to sign in to.
        return see_other("/");
    };
    let peer = peer_ip(&request);
    if let Some(limiter) = &state.auth_failures
        && limiter.blocked(peer)
    {
        return see_other(LINK_BLOCKED);
    }
    let Some(code) = link_code(request.uri().query()) else {
        // No code: nothing was tried; the dashboard signs in otherwise.
        return see_other("/");
    };
    let outcome = auth.redeem_sign_in_code(code);
    let client = super::audit::Client::of(request.extensions());
    link_sign_in_outcome(
        &state,
        client.0,
        outcome.as_ref().map(|(_, principal)| principal),
    );
    match outcome {
        Ok((cookie, _)) => with_session(see_other("/"), &cookie, state.secure_cookies),
        Err(_) => {
            if let Some(limiter) = &state.auth_failures {
                limiter.failed(peer).await;
            }
            see_other(LINK_REFUSED)
        }
    }
}

/// Every sign-in through a one-time link ends here, accepted or refused:
/// logged and recorded in the audit trail (a refusal rate-limited there),
/// with the token and the reason, never the code.
fn link_sign_in_outcome(
    state: &AppState,
    client: Option<std::net::SocketAddr>,
    outcome: Result<&Principal, &Unauthorized>,
) {
    match outcome {
        Ok(principal) => {
            tracing::info!(
                token = principal.token_id.as_deref().unwrap_or("-"),
                name = %principal.name,
                client = ?client,
                "signed in with a one-time link"
            );
            if let Some(audit) = &state.audit {
                audit.record(AuditEvent::SignIn {
                    actor: Actor::of(AuditVia::Http, Some(principal), client),
                    method: SignInMethod::Link,
                    outcome: SignInOutcome::Ok,
                    reason: None,
                });
            }
        }
        Err(reason) => {
            tracing::warn!(%reason, client = ?client, "one-time sign-in link refused");
            if let Some(audit) = &state.audit {
                audit.refused(AuditEvent::SignIn {
                    actor: Actor::of(AuditVia::Http, None, client),
                    method: SignInMethod::Link,
                    outcome: SignInOutcome::Failed,
                    reason: Some(reason.to_string()),
                });
            }
        }
    }
}

/// The session cookie of a request, kept by the middleware for sign-out.
#[derive(Clone)]
pub struct SessionId(pub String);

/// Failed authentications per client address: after a few, each further
/// failure waits a little longer; after many, the address is answered 429
/// until a quiet minute passes.
pub struct FailureLimiter {
    /// Failures before an address is answered 429; a quarter of it before
    /// answers are slowed.
    limit: u32,
    failures:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

/// A quiet minute forgives an address.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            failures: std::sync::Mutex::default(),
        }
    }

    fn count(&self, peer: std::net::IpAddr) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&peer) {
            Some((count, last)) if last.elapsed() < FORGET_AFTER => *count,
            _ => 0,
        }
    }

    /// Whether `peer` is answered 429 for now.
    pub fn blocked(&self, peer: Option<std::net::IpAddr>) -> bool {
        peer.is_some_and(|peer| self.count(peer) >= self.limit)
    }

    /// Records a failure and slows the answer down once there were several.
    pub async fn failed(&self, peer: Option<std::net::IpAddr>) {
        let Some(peer) = peer else { return };
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if failures.len() > 100_000 {
                failures.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
            }
            let entry = failures
                .entry(peer)
                .or_insert((0, std::time::Instant::now()));
            if entry.1.elapsed() >= FORGET_AFTER {
                entry.0 = 0;
            }
            entry.0 += 1;
            entry.1 = std::time::Instant::now();
            entry.0
        };
        let slow_after = self.limit / 4;
        if count > slow_after {
            let delay = 50 * u64::from((count - slow_after).min(10));
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
    }
}

/// Keeps `Arc` in the signature readable.
pub type SharedLimiter = Arc<FailureLimiter>;

/// One running export of a token, counted in [`AppState::token_exports`]
/// until dropped (with the response body).
pub struct TokenExportSlot {
    counts: Option<(TokenExports, Arc<str>)>,
}

/// Exports running per token id.
pub type TokenExports = Arc<std::sync::Mutex<std::collections::HashMap<Arc<str>, usize>>>;

impl TokenExportSlot {
    /// Claims a slot for the caller's token, or 429 when it runs its limit
    /// already. Without a token (`--no-auth`) only the global limit applies.
    pub fn claim(state: &AppState, caller: &Principal) -> Result<Self, ApiError> {
        let Some(token) = caller.token_id.clone() else {
            return Ok(Self { counts: None });
        };
        let mut counts = state
            .token_exports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let running = counts.entry(Arc::clone(&token)).or_insert(0);
        if *running >= state.max_exports_per_token {
            return Err(ApiError::TooManyRequests);
        }
        *running += 1;
        Ok(Self {
            counts: Some((Arc::clone(&state.token_exports), token)),
        })
    }
}

impl Drop for TokenExportSlot {
    fn drop(&mut self) {
        if let Some((counts, token)) = self.counts.take() {
            let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(running) = counts.get_mut(&token) {
                *running -= 1;
                if *running == 0 {
                    counts.remove(&token);
                }
            }
        }
    }
}
