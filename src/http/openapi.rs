//! `GET /api/openapi.json`: a hand-written OpenAPI 3.1 description of the HTTP API.
//! Keep it in step with the router in `http/mod.rs`; a test checks every route is here.

use axum::Json;
use serde_json::{json, Value};

pub async fn openapi() -> Json<Value> {
    Json(document())
}

fn q(name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": required, "schema": schema, "description": description })
}

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array(of: Value) -> Value {
    json!({ "type": "array", "items": of })
}

/// The admin endpoints' path parameters.
fn path_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } })
}

fn schemas() -> Value {
    let int = json!({ "type": "integer" });
    let string = json!({ "type": "string" });
    let time = json!({ "type": "string", "format": "date-time" });
    json!({
        "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": {
            "code": { "type": "string", "description": "Stable: bad_request, unauthorized, invalid_credentials, forbidden, not_found, conflict, rate_limited, unavailable, internal." },
            "message": string } } } },
        "User": { "type": "object", "properties": { "id": int, "name": string, "admin": { "type": "boolean" } } },
        "Login": { "type": "object", "properties": { "token": string, "user": r("User") } },
        "Network": { "type": "object", "properties": {
            "id": int, "name": string, "addr": string, "tls": { "type": "boolean" }, "nick": string,
            "state": { "enum": ["connecting", "connected", "disconnected", "stopped"] },
            "attempt": { "type": "integer", "description": "When connecting." },
            "reason": { "type": "string", "description": "When disconnected." },
            "retrying": { "type": "boolean", "description": "When disconnected." },
            "retry_at": { "type": "string", "format": "date-time", "description": "When disconnected and retrying (backing off): when the next attempt is due." },
            "last_error": { "type": "string", "description": "When connecting again: why the previous attempt failed." },
            "channels": array(string.clone()), "clients": int } },
        "Buffer": { "type": "object", "properties": {
            "name": string, "kind": { "enum": ["channel", "query"] }, "joined": { "type": "boolean" },
            "topic": { "type": ["string", "null"] },
            "unread": { "type": "integer", "description": "Messages after the read marker." },
            "highlights": { "type": "integer", "description": "Unread PRIVMSG/ACTION/NOTICE from others whose text contains the current nick (case-insensitive)." },
            "read_marker": int, "last_message_at": { "type": ["string", "null"], "format": "date-time" } } },
        "NetworkBuffers": { "type": "object", "properties": { "network": string, "nick": string, "buffers": array(r("Buffer")) } },
        "Message": { "type": "object", "properties": {
            "id": int, "time": time, "network": string, "buffer": string, "sender": string,
            "kind": { "type": "string", "description": "PRIVMSG NOTICE ACTION JOIN PART QUIT NICK KICK MODE TOPIC GAP" },
            "text": string,
            "raw": { "type": "string", "description": "The IRC line as received, decoded as UTF-8, else Latin-1." },
            "msgid": { "type": ["string", "null"] },
            "highlight": { "type": "string", "description": "Search results only: `text` HTML-escaped, each matched word wrapped in <mark>…</mark>." } } },
        "History": { "type": "object", "properties": { "messages": array(r("Message")),
            "more": { "type": "boolean", "description": "More messages exist in the paging direction." } } },
        "Search": { "type": "object", "properties": { "results": array(r("Message")),
            "next_before": { "type": ["integer", "null"], "description": "Pass as `before` for the next page." } } },
        "Read": { "type": "object", "properties": { "network": string, "buffer": string, "read_marker": int } },
        "LimitsSpec": { "type": "object", "required": ["sessions_per_ip", "connects_per_minute"], "properties": {
            "sessions_per_ip": { "type": "integer", "minimum": 1, "description": "Upstream sessions per source IP." },
            "connects_per_minute": { "type": "number", "exclusiveMinimum": 0, "description": "New connections per minute per source IP (GCRA), after `burst`." },
            "burst": { "type": "integer", "minimum": 1, "default": 1, "description": "Connections allowed back to back." },
            "messages_per_second": { "type": "number", "exclusiveMinimum": 0, "description": "Outgoing lines per second per connection (default: the node's, 1)." },
            "message_burst": { "type": "integer", "minimum": 1, "description": "Outgoing lines at once before pacing (default: the node's, 10)." },
            "sessions_total": { "type": "integer", "minimum": 1, "description": "Sessions on this network across the cluster (default: no cap)." } } },
        "Limits": { "allOf": [ r("LimitsSpec"), { "type": "object", "properties": {
            "key": { "type": "string", "description": "A host, a parent domain of hosts, or a network name (lowercase); see ARCHITECTURE.md, Limiter." },
            "updated_at": time } } ] }
    })
}

pub fn document() -> Value {
    let int = json!({ "type": "integer" });
    let string = json!({ "type": "string" });
    let time = json!({ "type": "string", "format": "date-time" });
    let unauthorized = err("No valid session (cookie `ferry_session` or `Authorization: Bearer`).");
    let bad = err("A query parameter or body field is invalid; the message names it.");
    let not_found = err("No such network or buffer for this user.");
    let forbidden = err("The session's user is not an admin.");
    let mut paths = serde_json::Map::new();
    paths.insert("/api/login".into(), json!({ "post": {
                "summary": "Log in: sets the session cookie and returns a bearer token.",
                "security": [],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["username", "password"], "properties": { "username": string, "password": string } } } } },
                "responses": { "200": ok("Logged in (Set-Cookie: ferry_session, HttpOnly, SameSite=Strict).", r("Login")),
                    "401": err("Wrong user name or password (indistinguishable)."),
                    "429": err("Too many failed logins from this address (or on this account, from an address with failures of its own); see Retry-After."),
                    "503": err("The password hashing pool is full; see Retry-After.") } } }));
    paths.insert("/api/logout".into(), json!({ "post": { "summary": "Revoke the current session and close its websockets (1008).",
                "responses": { "204": { "description": "Revoked; the cookie is cleared." }, "401": unauthorized } } }));
    paths.insert("/api/password".into(), json!({ "post": {
                "summary": "Change the password: ends the user's other sessions and closes all their websockets (1008); this session stays.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["current", "new"], "properties": { "current": string, "new": string } } } } },
                "responses": { "204": { "description": "Changed." },
                    "400": err("The new password is shorter than the minimum (`[auth] min_password_len`, default 8)."),
                    "401": unauthorized,
                    "403": err("The current password is wrong."),
                    "429": err("Too many failed logins; see Retry-After."),
                    "503": err("The password hashing pool is full; see Retry-After.") } } }));
    paths.insert(
        "/api/me".into(),
        json!({ "get": { "summary": "The session's user.",
                "responses": { "200": ok("The user.", r("User")), "401": unauthorized } } }),
    );
    paths.insert("/api/networks".into(), json!({ "get": { "summary": "The user's networks with live connection state and nick.",
                "responses": { "200": ok("Networks.", array(r("Network"))), "401": unauthorized } } }));
    paths.insert("/api/buffers".into(), json!({ "get": { "summary": "Per network: channels and queries with unread and highlight counts.",
                "responses": { "200": ok("Buffers by network.", array(r("NetworkBuffers"))), "401": unauthorized } } }));
    paths.insert("/api/history".into(), json!({ "get": { "summary": "A page of a buffer's backlog, oldest first, paged by message id.",
                "description": "With `before`: the newest `limit` messages older than it (down to `after` if given). With only `after`: the oldest `limit` messages newer than it. With neither: the newest `limit`.",
                "parameters": [
                    q("network", true, string.clone(), "Network name."),
                    q("buffer", true, string.clone(), "Channel or nick (case-insensitive)."),
                    q("before", false, int.clone(), "Exclusive upper message id."),
                    q("after", false, int.clone(), "Exclusive lower message id."),
                    q("limit", false, json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }), "Page size.")
                ],
                "responses": { "200": ok("A page.", r("History")), "400": bad, "401": unauthorized, "404": not_found } } }));
    paths.insert("/api/search".into(), json!({ "get": { "summary": "Full-text search of the user's backlog, newest first, every word must match.",
                "parameters": [
                    q("q", true, string.clone(), "Words to find."),
                    q("network", false, string.clone(), "Network name."),
                    q("buffer", false, string.clone(), "Buffer name (needs `network`)."),
                    q("sender", false, string.clone(), "Exact nick, case-insensitive."),
                    q("from", false, time.clone(), "Inclusive start: RFC 3339 or unix milliseconds."),
                    q("to", false, time.clone(), "Inclusive end: RFC 3339 or unix milliseconds."),
                    q("limit", false, json!({ "type": "integer", "minimum": 1, "maximum": 500, "default": 50 }), "Page size."),
                    q("before", false, int.clone(), "Exclusive upper message id (from `next_before`).")
                ],
                "responses": { "200": ok("Results.", r("Search")), "400": bad, "401": unauthorized, "404": not_found } } }));
    paths.insert("/api/read".into(), json!({ "post": { "summary": "Move a buffer's read marker forward (never back).",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["network", "buffer", "id"],
                    "properties": { "network": string, "buffer": string, "id": int } } } } },
                "responses": { "200": ok("The marker now.", r("Read")), "400": bad, "401": unauthorized, "404": not_found } } }));
    let disabled = err("Not found; `push_disabled` when notifications are off on this server.");
    let boolean = json!({ "type": "boolean" });
    paths.insert("/api/push/vapid".into(), json!({ "get": { "summary": "The VAPID public key (base64url), the `applicationServerKey` to subscribe with.",
                "responses": { "200": ok("The key.", json!({ "type": "object", "properties": { "public_key": string } })),
                    "401": unauthorized, "404": disabled } } }));
    paths.insert("/api/push/subscriptions".into(), json!({
                "post": { "summary": "Register this browser's (or distributor's) push subscription: `PushSubscription.toJSON()`.",
                    "description": "The endpoint must be https (http only when the server allows it); keys are base64url. Registering an endpoint again replaces its keys.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["endpoint", "keys"], "properties": { "endpoint": string,
                            "keys": { "type": "object", "required": ["p256dh", "auth"], "properties": { "p256dh": string, "auth": string } } } } } } },
                    "responses": { "201": ok("Registered.", json!({ "type": "object", "properties": { "created": boolean } })),
                        "200": ok("Already registered; keys replaced.", json!({ "type": "object", "properties": { "created": boolean } })),
                        "400": bad, "401": unauthorized, "404": disabled } },
                "delete": { "summary": "Remove a subscription by endpoint.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["endpoint"], "properties": { "endpoint": string } } } } },
                    "responses": { "204": { "description": "Removed." }, "400": bad, "401": unauthorized, "404": not_found } } }));
    let settings = json!({ "type": "object", "properties": {
        "keywords": array(string.clone()),
        "irc_is_active": { "type": "boolean", "description": "No pushes while an IRC client is attached (a focused web client always holds them back)." },
        "muted": array(json!({ "type": "object", "properties": { "network": string, "buffer": string } })) } });
    paths.insert("/api/push/settings".into(), json!({
                "get": { "summary": "The user's push settings and muted buffers.",
                    "responses": { "200": ok("Settings.", settings.clone()), "401": unauthorized, "404": disabled } },
                "put": { "summary": "Replace the extra keywords (one line each, at most 50 of 100 bytes) and the IRC-client setting.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["keywords", "irc_is_active"], "properties": {
                            "keywords": array(string.clone()), "irc_is_active": boolean } } } } },
                    "responses": { "200": ok("Settings now.", settings), "400": bad, "401": unauthorized, "404": disabled } } }));
    paths.insert("/api/push/mute".into(), json!({ "put": { "summary": "Mute or unmute a buffer: no pushes for its lines.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["network", "buffer", "muted"],
                    "properties": { "network": string, "buffer": string, "muted": boolean } } } } },
                "responses": { "200": ok("The buffer's state.", json!({ "type": "object", "properties": { "network": string, "buffer": string, "muted": boolean } })),
                    "400": bad, "401": unauthorized, "404": not_found } } }));
    paths.insert(
        "/api/openapi.json".into(),
        json!({ "get": { "summary": "This document.", "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1." } } } }),
    );
    paths.insert("/api/admin/users".into(), json!({
                "get": { "summary": "Admin: list users.", "description": "Node admin token or an admin user's session.",
                    "responses": { "200": { "description": "Users: name, admin, networks, running." }, "401": unauthorized.clone(), "403": forbidden.clone() } },
                "post": { "summary": "Admin: create a user and start it.",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["name", "password"],
                        "properties": { "name": string, "password": string, "admin": { "type": "boolean" } } } } } },
                    "responses": { "201": { "description": "Created." }, "400": bad.clone(), "401": unauthorized.clone(), "403": forbidden.clone(), "409": err("Exists.") } } }));
    paths.insert("/api/admin/users/{name}".into(), json!({ "delete": { "summary": "Admin: delete a user.",
                "parameters": [ path_param("name") ],
                "responses": { "204": { "description": "Deleted." }, "401": unauthorized.clone(), "403": forbidden.clone(), "404": not_found.clone() } },
            "patch": { "summary": "Admin: set a user's backlog retention (null = unlimited).",
                "parameters": [ path_param("name") ],
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
                    "properties": { "retention_days": { "type": ["integer", "null"] }, "retention_messages": { "type": ["integer", "null"] } } } } } },
                "responses": { "204": { "description": "Updated." }, "400": bad.clone(), "401": unauthorized.clone(), "403": forbidden.clone(), "404": not_found.clone() } } }));
    paths.insert("/api/admin/users/{name}/networks".into(), json!({
                "get": { "summary": "Admin: a user's networks with live state.", "parameters": [ path_param("name") ],
                    "responses": { "200": { "description": "Networks." }, "401": unauthorized.clone(), "403": forbidden.clone(), "404": not_found.clone() } },
                "post": { "summary": "Admin: add a network to a user (it connects at once).", "parameters": [ path_param("name") ],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
                        "required": ["name", "addr", "nick"],
                        "properties": { "name": string, "addr": string, "tls": { "type": "boolean" }, "tls_verify": string,
                            "nick": string, "username": string, "realname": string, "sasl": string, "sasl_cert": string,
                            "source_ip": string, "channels": array(string.clone()) } } } } },
                    "responses": { "201": { "description": "Created." }, "400": bad, "401": unauthorized.clone(), "403": forbidden.clone(), "404": not_found.clone(), "409": err("Exists.") } } }));
    paths.insert("/api/admin/users/{name}/networks/{network}".into(), json!({ "delete": { "summary": "Admin: delete a network.",
                "parameters": [ path_param("name"), path_param("network") ],
                "responses": { "204": { "description": "Deleted." }, "401": unauthorized, "403": forbidden, "404": not_found } } }));
    paths.insert("/api/admin/limits".into(), json!({ "get": { "summary": "Admin: the configured per-network limits.",
                "responses": { "200": ok("Limits by key.", array(r("Limits"))), "401": unauthorized.clone(), "403": forbidden.clone() } } }));
    paths.insert("/api/admin/limits/{key}".into(), json!({
                "put": { "summary": "Admin: set a network's limits (create or replace).",
                    "description": "This node applies them at once, the other nodes within their limits interval (5 s by default); no restart. A key no network falls under (host, parent domain or network name) is refused unless `force=true`.",
                    "parameters": [ path_param("key"), { "name": "force", "in": "query", "required": false, "schema": { "type": "boolean" } } ],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": r("LimitsSpec") } } },
                    "responses": { "200": ok("The stored limits.", r("Limits")), "400": err("A value is invalid (the message names it), or no network falls under the key."), "401": unauthorized.clone(), "403": forbidden.clone() } },
                "delete": { "summary": "Admin: remove a network's limits (back to the defaults).", "parameters": [ path_param("key") ],
                    "responses": { "204": { "description": "Removed." }, "401": unauthorized.clone(), "403": forbidden.clone(), "404": err("No limits under this key.") } } }));
    paths.insert("/healthz".into(), json!({ "get": { "summary": "The process is up.", "security": [], "responses": { "200": { "description": "Up." } } } }));
    paths.insert("/readyz".into(), json!({ "get": { "summary": "The store answers and the node is not shutting down.", "security": [],
                "responses": { "200": { "description": "Ready." }, "503": { "description": "Not ready." } } } }));
    paths.insert("/metrics".into(), json!({ "get": { "summary": "Prometheus text format.", "security": [],
                "responses": { "200": { "description": "Metrics.", "content": { "text/plain": {} } } } } }));
    let doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every endpoint except login, health checks, metrics and this document needs a session: the `ferry_session` cookie set by login, or `Authorization: Bearer <token>`. Errors are `{\"error\":{\"code\",\"message\"}}` with a stable code. Message ids are per-user sequence numbers."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "cookie": { "type": "apiKey", "in": "cookie", "name": "ferry_session" }
            },
            "schemas": schemas(),
        },
        "security": [ { "bearer": [] }, { "cookie": [] } ],
        "paths": paths,
    });
    doc
}
