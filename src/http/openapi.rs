//! `GET /api/openapi.json`: the OpenAPI 3.1 description of the HTTP API, derived by
//! `utoipa` from the handlers' `#[utoipa::path]` annotations and their types'
//! `ToSchema`. The documented routes are registered through `utoipa_axum` in
//! `http/mod.rs` (`documented`) and `http/admin.rs`, so the router and this document
//! come from one list and cannot drift. [`ApiDoc`] holds only what is not per route:
//! the top-level info, the security schemes and the error schema.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry HTTP API",
        description = "Every endpoint except login, health checks, metrics and this document needs a session: the `ferry_session` cookie set by login, or `Authorization: Bearer <token>`. Errors are `{\"error\":{\"code\",\"message\"}}` with a stable code. Message ids are per-user sequence numbers."
    ),
    components(schemas(ErrorJson)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("cookie" = []))
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("ferry_session"))),
        );
    }
}

/// Every error: `{"error":{"code","message"}}`.
#[derive(ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // only described: errors are built by `ApiError`
pub struct ErrorJson {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    /// Stable: bad_request, unauthorized, invalid_credentials, forbidden,
    /// forbidden_origin, not_found, conflict, rate_limited, unavailable, internal,
    /// moved, owner_unreachable; for account changes also server_not_allowed and
    /// too_many_networks; for invites invite_invalid and invites_disabled.
    code: String,
    message: String,
}

/// The document, built once from the documented routes.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The document as a value.
pub fn document() -> utoipa::openapi::OpenApi {
    super::documented().split_for_parts().1
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", security(()),
    responses((status = 200, description = "OpenAPI 3.1.", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every user-API route is documented with its method (the router and the
    /// document are built from one list; this pins that list).
    #[test]
    fn openapi_covers_the_user_api() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["title"], "Ferry HTTP API");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for (path, method) in [
            ("/api/login", "post"),
            ("/api/logout", "post"),
            ("/api/password", "post"),
            ("/api/me", "get"),
            ("/api/me/password", "post"),
            ("/api/networks", "get"),
            ("/api/networks", "post"),
            ("/api/networks/{name}", "get"),
            ("/api/networks/{name}", "patch"),
            ("/api/networks/{name}", "delete"),
            ("/api/networks/{name}/channels", "post"),
            ("/api/networks/{name}/channels/{channel}", "delete"),
            ("/api/buffers", "get"),
            ("/api/history", "get"),
            ("/api/search", "get"),
            ("/api/read", "post"),
            ("/api/push/vapid", "get"),
            ("/api/push/subscriptions", "post"),
            ("/api/push/subscriptions", "delete"),
            ("/api/push/settings", "get"),
            ("/api/push/settings", "put"),
            ("/api/push/mute", "put"),
            ("/api/admin/users", "post"),
            ("/api/invites/{token}", "get"),
            ("/api/invites/{token}", "post"),
            ("/api/admin/invites", "post"),
            ("/api/admin/limits/{key}", "put"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
        // Field names are serde's.
        let s = &doc["components"]["schemas"];
        for (schema, field) in [
            ("NetworkBuffersJson", "buffers"),
            ("SettingsJson", "irc_is_active"),
            ("LimitsSpec", "connects_per_minute"),
            ("NewNetworkSpec", "channels"),
            ("NetworkChange", "enabled"),
            ("NetworkSettings", "sasl_account"),
            ("Error", "error"),
        ] {
            assert!(
                s[schema]["properties"][field].is_object(),
                "{schema}.{field} missing: {}",
                s[schema]
            );
        }
    }
}
