//! Who is calling: the bearer token checked (and its session kept alive), the purpose and
//! break-the-glass headers read, and `Authorized<P>`, which refuses a caller without the role
//! (or of another organization, for what they may not do) before the body is read.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::auth::{access, sessions, AuthUser, Authorized, Permission, Refused, TokenError};
use crate::http::{ApiError, AppState};

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
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
        let result = match token {
            Some(token) => state.auth.verify(token).await,
            None => Err(TokenError::Missing),
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
        user.request_id = parts
            .extensions
            .get::<crate::http::RequestContext>()
            .map(|c| c.request_id.clone());
        Ok(user)
    }
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
