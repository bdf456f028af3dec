//! What every request's input goes through before a handler trusts it: JSON bodies
//! whose rejections are [`ApiError`]s (the same JSON shape as every other error,
//! never axum's plain text), and text fields refused when they hold control
//! characters (NUL, CR, LF, escapes…), which no name, query or login has a use for
//! and which PostgreSQL refuses in text.

use axum::extract::{FromRequest, Request};
use axum::Json;
use serde::de::DeserializeOwned;

use super::ApiError;

/// `Json<T>` whose rejection is a `400 bad_request` (`415` without a JSON content
/// type) in the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(ApiError::new(
                e.status(),
                "bad_request",
                format!("invalid request body: {}", e.body_text()),
            )),
        }
    }
}

/// Refuses `value` when it holds a control character: `400` naming the field.
pub fn plain<'a>(field: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if has_control(value) {
        return Err(ApiError::bad_request(format!(
            "invalid `{field}`: control characters (NUL, line breaks, escapes) are not allowed"
        )));
    }
    Ok(value)
}

/// Whether `s` holds a control character (C0, DEL or C1).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused() {
        assert!(plain("q", "hello world é").is_ok());
        for bad in [
            "a\0b", "a\nb", "a\rb", "\x1b[31m", "a\u{7f}", "a\u{85}b", "a\tb",
        ] {
            let e = plain("q", bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
