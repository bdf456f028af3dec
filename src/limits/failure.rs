//! How a connect attempt failed, as both sides of a connect see it: `upstream`
//! classifies the server's refusal (see `upstream::classify`) and decides when to
//! retry; the limiter learns from it (a throttled key waits, a full source IP is
//! skipped for a while). Defined here, below `upstream`, because the limiter needs it
//! and `upstream` already depends on the limiter.

/// What to do after a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Network trouble, a restart, a timeout: retry with the normal backoff.
    Temporary,
    /// The server limits our connect rate: wait much longer before retrying.
    Throttled,
    /// No slot left for our source address: retry later (or elsewhere).
    TooManyConnections,
    /// Retrying cannot help (ban, bad credentials, SASL required): stop.
    Permanent,
}
