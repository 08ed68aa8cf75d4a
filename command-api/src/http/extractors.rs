//! Who is calling: the bearer token checked (and its session kept alive), the purpose and
//! break-the-glass headers read, and `Authorized<P>`, which refuses a caller without the role
//! (or of another organization, for what they may not do) before the body is read.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::{
    access, backend, sessions, AuthUser, Authorized, Permission, Refused, TokenError,
};
use crate::http::{ApiError, AppState};
use application::smart;

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // A caller inside this process (the import): extensions never come from the network.
        if let Some(crate::http::TrustedCaller(user)) = parts.extensions.get() {
            return Ok(user.clone());
        }
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            });
        let result = match (token, state.auth.backend()) {
            // An access token issued here to a SMART backend client.
            (Some(token), Some(backend)) if token.starts_with(backend::TOKEN_PREFIX) => {
                backend.verify(token, (state.clock)()).await
            }
            (Some(token), _) => state.auth.verify(token).await,
            (None, _) => Err(TokenError::Missing),
        };
        let mut user = result.map_err(|e| {
            tracing::info!(error.message = %e, "unauthenticated request");
            ApiError::Unauthenticated
        })?;
        let alive = sessions::touch(
            &state.pool,
            &user.session_id,
            &user.id,
            (state.clock)(),
            state.auth.idle_timeout(),
        )
        .await?;
        if !alive {
            tracing::info!(user_id = %user.id, "session revoked or idle too long");
            return Err(ApiError::Unauthenticated);
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned())
        };
        let mut errors = domain::FieldErrors::new();
        if let Some(purpose) = header("x-purpose-of-use") {
            if let Some(p) = errors.check(access::Purpose::parse("X-Purpose-Of-Use", &purpose)) {
                user.purpose = p;
            }
        }
        if let Some(reason) = header("x-break-glass-reason") {
            user.break_glass = errors.check(access::BreakGlassReason::parse(
                "X-Break-Glass-Reason",
                &reason,
            ));
        }
        errors.into_result().map_err(ApiError::InvalidParameters)?;
        let context = parts.extensions.get::<crate::http::RequestContext>();
        user.request_id = context.map(|c| c.request_id.clone());
        user.traceparent = context.map(|c| c.traceparent.clone());
        if let Some(scopes) = &user.scopes {
            // Under the FHIR API the path is the one within it (its router is nested).
            let fhir = parts
                .extensions
                .get::<crate::http::fhir::FhirApi>()
                .map(|_| parts.uri.path());
            user.confined_to = scoped(scopes, &user, (&parts.method, fhir))?;
        }
        Ok(user)
    }
}

/// What a token's SMART scopes let this request do: `Ok(Some(patient))` when only patient
/// scopes grant it (it reaches the launch patient only), `Ok(None)` when a user or system
/// scope does (as far as the roles reach).
///
/// # Errors
///
/// [`Refused::Forbidden`] when no scope grants the request's resource type and interaction,
/// for a patient grant without a launch patient, and for the native API (the scopes name FHIR
/// resources).
fn scoped(
    scopes: &smart::Scopes,
    user: &AuthUser,
    (method, fhir_path): (&axum::http::Method, Option<&str>),
) -> Result<Option<uuid::Uuid>, ApiError> {
    let refused = |why: &str| {
        tracing::info!(user_id = %user.id, why, "refused by the token's SMART scopes");
        ApiError::from(Refused::Forbidden)
    };
    let Some(path) = fhir_path else {
        return Err(refused("outside the FHIR API"));
    };
    let asked = fhir_interaction(method, path);
    let Some((resource_type, interaction)) = asked else {
        // A Bundle: each of its entries is checked as a request of its own.
        return Ok(None);
    };
    match scopes.grant(resource_type, interaction) {
        smart::Grant::Roles => Ok(None),
        smart::Grant::LaunchPatient => user
            .launch_patient
            .map(Some)
            .ok_or_else(|| refused("patient scopes without a launch patient")),
        smart::Grant::None => Err(refused("no scope grants it")),
    }
}

/// The FHIR resource type and interaction of a request to `path` within the FHIR API: `None`
/// for a Bundle posted to the base and for bulk exports (checked by their handlers). A document's bytes (`Binary`) are read as
/// its DocumentReference; `Patient/{id}/$everything` is a read of the Patient (the answer holds
/// only the types the scopes let the caller read) and `$match` a search.
fn fhir_interaction(
    method: &axum::http::Method,
    path: &str,
) -> Option<(&'static str, smart::Interaction)> {
    use axum::http::Method;
    use smart::Interaction::{Create, Delete, Read, Search, Update};
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let &first = segments.first()?;
    // A bulk export is granted type by type by its kick-off and its files (the handlers hold
    // them to the scopes); its status is its caller's only.
    if matches!(
        segments.as_slice(),
        ["$export"] | ["Patient", "$export"] | ["bulk-export", ..]
    ) {
        return None;
    }
    let resource_type = crate::http::fhir::RESOURCE_TYPES
        .iter()
        .copied()
        .find(|t| *t == first)
        .or((first == "Binary").then_some("DocumentReference"));
    // An unknown type answers 404 by the FHIR API's fallback; nothing to grant.
    let resource_type = resource_type.unwrap_or("");
    let interaction = match (method, segments.len()) {
        (&Method::GET, 1) => Search,
        (&Method::POST, 1) => Create,
        (&Method::POST, 2) if segments[1] == "$match" => Search,
        (&Method::POST, 2) if segments[1] == "_search" => Search,
        (&Method::GET, _) => Read,
        (&Method::PUT | &Method::PATCH, _) => Update,
        (&Method::DELETE, _) => Delete,
        _ => Read,
    };
    Some((resource_type, interaction))
}

impl<P: Permission> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        let mut allowed = user.require(P::ACTION);
        if allowed.is_ok()
            && access::is_external(&user, state.home_organization.as_deref())
            && !access::external_may(P::ACTION)
        {
            tracing::info!(user_id = %user.id, action = ?P::ACTION, "forbidden to another organization");
            allowed = Err(Refused::Forbidden);
        }
        if let Err(forbidden) = allowed {
            // A refused attempt at one patient's data is an access entry too.
            if let Some(id) = patient_in_path(parts.uri.path()) {
                let at = (state.clock)();
                let action = format!("{:?}", P::ACTION);
                if let Err(e) = state
                    .access
                    .record(&user, &action, &[id], access::Decision::Denied, at)
                    .await
                {
                    tracing::warn!(error.message = %e, "could not record a refused access");
                }
            }
            return Err(forbidden.into());
        }
        Ok(Self(user, std::marker::PhantomData))
    }
}

/// The patient id of a `/v1/patients/{id}...` path.
fn patient_in_path(path: &str) -> Option<uuid::Uuid> {
    let rest = path.strip_prefix("/v1/patients/")?;
    uuid::Uuid::parse_str(rest.split('/').next()?).ok()
}
