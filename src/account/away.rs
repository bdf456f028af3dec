//! A user's auto-away settings.

use serde::Deserialize;
use utoipa::ToSchema;

use super::spec::present;
use super::{invalid, AccountError};
use crate::services::Services;
use crate::store::User;

/// A user's auto-away settings, as every door shows them.
#[derive(Clone, Debug, serde::Serialize, ToSchema)]
pub struct AwayView {
    /// Whether Ferry marks you away on every network while none of your clients is
    /// attached (and back when one attaches). Your own AWAY from a client is left alone.
    pub auto_away: bool,
    /// Your own away text; `null`: the server's default.
    pub away_message: Option<String>,
    /// The server's default away text.
    pub default_away_message: String,
}

/// Changes to the auto-away settings: what is absent stays.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AwayChange {
    pub auto_away: Option<bool>,
    /// Your own away text; `null` or empty: back to the server's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub away_message: Option<Option<String>>,
}

/// Longest away text a user may set: networks cut theirs at about 200-300 bytes.
const MAX_AWAY_LEN: usize = 300;

fn away_view(services: &Services, s: &crate::store::AwaySettings) -> AwayView {
    AwayView {
        auto_away: s.auto_away,
        away_message: s.away_message.clone(),
        default_away_message: services.users.config().away_message.clone(),
    }
}

/// The user's auto-away settings.
///
/// # Errors
/// `Store`.
pub async fn away_settings(services: &Services, user: &User) -> Result<AwayView, AccountError> {
    let s = services.store.away_settings(user.id).await?;
    Ok(away_view(services, &s))
}

/// Changes the user's auto-away settings; a running session follows at once (a user
/// who is away now is marked back, or away with the new text).
///
/// # Errors
/// `Invalid` (a text with control characters or too long), `Store`.
pub async fn update_away(
    services: &Services,
    user: &User,
    change: &AwayChange,
) -> Result<AwayView, AccountError> {
    let mut s = services.store.away_settings(user.id).await?;
    if let Some(on) = change.auto_away {
        s.auto_away = on;
    }
    if let Some(text) = &change.away_message {
        let text = text.as_deref().map(str::trim).filter(|t| !t.is_empty());
        if let Some(t) = text {
            if t.chars().any(char::is_control) {
                return Err(invalid(
                    "away_message: no control characters or line breaks",
                ));
            }
            if t.len() > MAX_AWAY_LEN {
                return Err(invalid(format!(
                    "away_message: at most {MAX_AWAY_LEN} bytes"
                )));
            }
        }
        s.away_message = text.map(str::to_owned);
    }
    services.store.set_away_settings(user.id, &s).await?;
    if let Some(h) = services.users.get(user.id) {
        h.set_away_settings(s.clone()).await?;
    }
    tracing::info!(user = %user.name, auto_away = s.auto_away, "away settings changed by their user");
    Ok(away_view(services, &s))
}
