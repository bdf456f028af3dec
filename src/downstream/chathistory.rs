//! IRCv3 `draft/chathistory`: `BEFORE`, `AFTER`, `LATEST`, `AROUND`,
//! `BETWEEN` and `TARGETS`, served from the store. Message references are
//! `msgid=<seq>` (our message ids) or `timestamp=<server-time>`.

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};

use super::adapt;
use super::conn::Session;
use super::error::ProtoError;
use super::io::{WriteError, Writer};
use crate::irc::{time, Message};
use crate::store::{HistoryQuery, Seq, StoredMessage};

/// The most messages one request returns (advertised as `CHATHISTORY=1000`).
pub const MAX_LIMIT: i64 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    MsgId(Seq),
    Time(DateTime<Utc>),
    /// `*`: only valid for `LATEST`.
    Star,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Before {
        target: Bytes,
        at: Ref,
        limit: i64,
    },
    After {
        target: Bytes,
        at: Ref,
        limit: i64,
    },
    Latest {
        target: Bytes,
        at: Ref,
        limit: i64,
    },
    Around {
        target: Bytes,
        at: Ref,
        limit: i64,
    },
    Between {
        target: Bytes,
        start: Ref,
        end: Ref,
        limit: i64,
    },
    Targets {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        limit: i64,
    },
}

fn fail(code: &'static str, context: &[&str], description: &str) -> ProtoError {
    ProtoError::Fail {
        command: "CHATHISTORY",
        code,
        context: context.iter().map(|s| s.to_string()).collect(),
        description: description.to_owned(),
    }
}

fn parse_ref(sub: &str, raw: &str) -> Result<Ref, ProtoError> {
    let bad = || fail("INVALID_PARAMS", &[sub, raw], "Invalid message reference");
    if raw == "*" {
        return Ok(Ref::Star);
    }
    match raw.split_once('=') {
        Some(("msgid", id)) => id.parse().map(Ref::MsgId).map_err(|_| bad()),
        Some(("timestamp", ts)) => time::parse(ts).map(Ref::Time).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_limit(sub: &str, raw: &str) -> Result<i64, ProtoError> {
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n.min(MAX_LIMIT)),
        _ => Err(fail("INVALID_PARAMS", &[sub, raw], "Invalid limit")),
    }
}

/// Parses a `CHATHISTORY` command.
pub fn parse(msg: &Message) -> Result<Request, ProtoError> {
    let p: Vec<String> = (0..msg.params.len())
        .map(|i| msg.param_str(i).unwrap_or_default().into_owned())
        .collect();
    let Some(sub) = p.first().map(|s| s.to_ascii_uppercase()) else {
        return Err(fail("INVALID_PARAMS", &[], "Missing subcommand"));
    };
    let sub = sub.as_str();
    let need = |n: usize| {
        if p.len() < n + 1 {
            Err(fail("INVALID_PARAMS", &[sub], "Not enough parameters"))
        } else {
            Ok(())
        }
    };
    let target = || {
        let t = msg.params[1].clone();
        if t.is_empty() || t.contains(&b',') || t.contains(&b' ') || &t[..] == b"*" {
            Err(fail("INVALID_TARGET", &[sub, &p[1]], "Invalid target"))
        } else {
            Ok(t)
        }
    };
    let no_star = |r: Ref, raw: &str| {
        if r == Ref::Star {
            Err(fail(
                "INVALID_PARAMS",
                &[sub, raw],
                "Invalid message reference",
            ))
        } else {
            Ok(r)
        }
    };
    match sub {
        "BEFORE" | "AFTER" | "LATEST" | "AROUND" => {
            need(3)?;
            let target = target()?;
            let mut at = parse_ref(sub, &p[2])?;
            if sub != "LATEST" {
                at = no_star(at, &p[2])?;
            }
            let limit = parse_limit(sub, &p[3])?;
            Ok(match sub {
                "BEFORE" => Request::Before { target, at, limit },
                "AFTER" => Request::After { target, at, limit },
                "LATEST" => Request::Latest { target, at, limit },
                _ => Request::Around { target, at, limit },
            })
        }
        "BETWEEN" => {
            need(4)?;
            let target = target()?;
            let start = no_star(parse_ref(sub, &p[2])?, &p[2])?;
            let end = no_star(parse_ref(sub, &p[3])?, &p[3])?;
            let limit = parse_limit(sub, &p[4])?;
            Ok(Request::Between {
                target,
                start,
                end,
                limit,
            })
        }
        "TARGETS" => {
            need(3)?;
            let ts = |raw: &str| match parse_ref(sub, raw)? {
                Ref::Time(t) => Ok(t),
                _ => Err(fail("INVALID_PARAMS", &[sub, raw], "Invalid timestamp")),
            };
            let (a, b) = (ts(&p[1])?, ts(&p[2])?);
            let limit = parse_limit(sub, &p[3])?;
            Ok(Request::Targets {
                start: a.min(b),
                end: a.max(b),
                limit,
            })
        }
        other => Err(fail("UNKNOWN_COMMAND", &[other], "Unknown subcommand")),
    }
}

/// Bounds of one store query.
#[derive(Default)]
struct Bounds {
    before: Option<Seq>,
    after: Option<Seq>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

const TICK: Duration = Duration::milliseconds(1);

/// Bounds for "strictly after `r`" or, with `inclusive`, "at or after".
fn lower(r: &Ref, inclusive: bool) -> Bounds {
    match r {
        Ref::MsgId(s) => Bounds {
            after: Some(if inclusive { s - 1 } else { *s }),
            ..Default::default()
        },
        Ref::Time(t) => Bounds {
            from: Some(if inclusive { *t } else { *t + TICK }),
            ..Default::default()
        },
        Ref::Star => Bounds::default(),
    }
}

/// Bounds for "strictly before `r`" or, with `inclusive`, "at or before".
fn upper(r: &Ref, inclusive: bool) -> Bounds {
    match r {
        Ref::MsgId(s) => Bounds {
            before: Some(if inclusive { s + 1 } else { *s }),
            ..Default::default()
        },
        Ref::Time(t) => Bounds {
            to: Some(if inclusive { *t } else { *t - TICK }),
            ..Default::default()
        },
        Ref::Star => Bounds::default(),
    }
}

fn both(a: Bounds, b: Bounds) -> Bounds {
    Bounds {
        before: a.before.or(b.before),
        after: a.after.or(b.after),
        from: a.from.or(b.from),
        to: a.to.or(b.to),
    }
}

fn later(a: &Ref, b: &Ref) -> bool {
    match (a, b) {
        (Ref::MsgId(x), Ref::MsgId(y)) => x > y,
        (Ref::Time(x), Ref::Time(y)) => x > y,
        _ => false,
    }
}

impl Session {
    async fn query(
        &self,
        key: &[u8],
        b: Bounds,
        limit: i64,
        newest_first: bool,
    ) -> Result<Vec<StoredMessage>, ProtoError> {
        // What the client saw live may still sit in the writer's queue.
        let _ = self.services.writer.flush().await;
        let q = HistoryQuery {
            user: self.user_id,
            network: Some(self.network),
            buffer_key: Some(key.to_vec()),
            before: b.before,
            after: b.after,
            from: b.from,
            to: b.to,
            limit,
            newest_first,
        };
        let mut rows = self.services.store.history(&q).await.map_err(|e| {
            tracing::warn!(error = %e, user = %self.user.name, "chathistory query failed");
            fail("MESSAGE_ERROR", &[], "Could not read history")
        })?;
        if newest_first {
            rows.reverse();
        }
        Ok(rows)
    }

    async fn messages(&self, req: &Request) -> Result<Vec<StoredMessage>, ProtoError> {
        let key = |t: &Bytes| self.isupport.casemapping.fold(t);
        Ok(match req {
            Request::Before { target, at, limit } => {
                self.query(&key(target), upper(at, false), *limit, true)
                    .await?
            }
            Request::After { target, at, limit } => {
                self.query(&key(target), lower(at, false), *limit, false)
                    .await?
            }
            Request::Latest { target, at, limit } => {
                self.query(&key(target), lower(at, false), *limit, true)
                    .await?
            }
            Request::Around { target, at, limit } => {
                let k = key(target);
                let mut rows = self
                    .query(&k, upper(at, true), (limit / 2).max(1), true)
                    .await?;
                let rest = limit - rows.len() as i64;
                if rest > 0 {
                    rows.extend(self.query(&k, lower(at, false), rest, false).await?);
                }
                rows
            }
            Request::Between {
                target,
                start,
                end,
                limit,
            } => {
                let k = key(target);
                if later(start, end) {
                    self.query(
                        &k,
                        both(upper(start, false), lower(end, false)),
                        *limit,
                        true,
                    )
                    .await?
                } else {
                    self.query(
                        &k,
                        both(lower(start, false), upper(end, false)),
                        *limit,
                        false,
                    )
                    .await?
                }
            }
            Request::Targets { .. } => Vec::new(),
        })
    }

    fn next_batch_id(&mut self) -> String {
        self.batches += 1;
        format!("ch{}", self.batches)
    }

    /// Answers one `CHATHISTORY` command.
    pub async fn chathistory(&mut self, w: &mut Writer, msg: &Message) -> Result<(), WriteError> {
        let server = self.cfg.server_name.clone();
        let nick = self.nick_str();
        let req = match parse(msg) {
            Ok(r) => r,
            Err(e) => return w.send(&e.to_message(&server, &nick)).await,
        };
        let (lines, batch_type, batch_param) = match &req {
            Request::Targets { start, end, limit } => {
                let rows = self
                    .services
                    .store
                    .targets(self.user_id, self.network, *start, *end, *limit)
                    .await;
                let rows = match rows {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, user = %self.user.name, "chathistory targets failed");
                        return w
                            .send(
                                &fail("MESSAGE_ERROR", &["TARGETS"], "Could not read history")
                                    .to_message(&server, &nick),
                            )
                            .await;
                    }
                };
                let lines = rows
                    .into_iter()
                    .map(|(name, t)| {
                        Message::new(
                            "CHATHISTORY",
                            [
                                Bytes::from_static(b"TARGETS"),
                                Bytes::from(name),
                                Bytes::from(time::format(t)),
                            ],
                        )
                        .with_prefix(server.clone())
                    })
                    .collect::<Vec<_>>();
                (lines, "draft/chathistory-targets", None)
            }
            Request::Before { target, .. }
            | Request::After { target, .. }
            | Request::Latest { target, .. }
            | Request::Around { target, .. }
            | Request::Between { target, .. } => {
                let rows = match self.messages(&req).await {
                    Ok(r) => r,
                    Err(e) => return w.send(&e.to_message(&server, &nick)).await,
                };
                let client = self.client();
                let lines = rows
                    .iter()
                    .filter_map(|m| adapt::from_store(m, &client))
                    .collect();
                (lines, "chathistory", Some(target.clone()))
            }
        };
        if !self.caps.has("batch") {
            for l in &lines {
                w.feed(l).await?;
            }
            return w.flush().await;
        }
        let id = self.next_batch_id();
        let mut start = vec![Bytes::from(format!("+{id}")), Bytes::from(batch_type)];
        start.extend(batch_param);
        w.feed(&Message::new("BATCH", start).with_prefix(server.clone()))
            .await?;
        for mut l in lines {
            l.set_tag("batch", Some(&id));
            w.feed(&l).await?;
        }
        w.send(&Message::new("BATCH", [format!("-{id}")]).with_prefix(server))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Request, String> {
        let m = Message::parse(Bytes::copy_from_slice(line.as_bytes())).unwrap();
        parse(&m).map_err(|e| e.to_message("ferry", "me").to_string())
    }

    #[test]
    fn parses_requests() {
        let t = time::parse("2024-01-02T03:04:05.678Z").unwrap();
        assert_eq!(
            p("CHATHISTORY LATEST #Chan * 50"),
            Ok(Request::Latest {
                target: Bytes::from_static(b"#Chan"),
                at: Ref::Star,
                limit: 50
            })
        );
        assert_eq!(
            p("CHATHISTORY before #c msgid=42 5000"),
            Ok(Request::Before {
                target: Bytes::from_static(b"#c"),
                at: Ref::MsgId(42),
                limit: 1000
            })
        );
        assert_eq!(
            p("CHATHISTORY AFTER bob timestamp=2024-01-02T03:04:05.678Z 10"),
            Ok(Request::After {
                target: Bytes::from_static(b"bob"),
                at: Ref::Time(t),
                limit: 10
            })
        );
        assert_eq!(
            p("CHATHISTORY BETWEEN #c msgid=9 msgid=3 10"),
            Ok(Request::Between {
                target: Bytes::from_static(b"#c"),
                start: Ref::MsgId(9),
                end: Ref::MsgId(3),
                limit: 10
            })
        );
        assert_eq!(
            p("CHATHISTORY TARGETS timestamp=2024-01-02T03:04:05.678Z timestamp=2020-01-01T00:00:00.000Z 10"),
            Ok(Request::Targets { start: time::parse("2020-01-01T00:00:00.000Z").unwrap(), end: t, limit: 10 })
        );
    }

    #[test]
    fn rejects_bad_requests() {
        assert_eq!(
            p("CHATHISTORY FOO #c * 1").unwrap_err(),
            ":ferry FAIL CHATHISTORY UNKNOWN_COMMAND FOO :Unknown subcommand"
        );
        assert_eq!(
            p("CHATHISTORY BEFORE #c * 10").unwrap_err(),
            ":ferry FAIL CHATHISTORY INVALID_PARAMS BEFORE * :Invalid message reference"
        );
        assert_eq!(
            p("CHATHISTORY BEFORE #c msgid=x 10").unwrap_err(),
            ":ferry FAIL CHATHISTORY INVALID_PARAMS BEFORE msgid=x :Invalid message reference"
        );
        assert_eq!(
            p("CHATHISTORY LATEST #c * 0").unwrap_err(),
            ":ferry FAIL CHATHISTORY INVALID_PARAMS LATEST 0 :Invalid limit"
        );
        assert_eq!(
            p("CHATHISTORY LATEST #a,#b * 5").unwrap_err(),
            ":ferry FAIL CHATHISTORY INVALID_TARGET LATEST #a,#b :Invalid target"
        );
        assert!(p("CHATHISTORY LATEST #c")
            .unwrap_err()
            .contains("INVALID_PARAMS"));
        assert!(p("CHATHISTORY").unwrap_err().contains("INVALID_PARAMS"));
    }

    #[test]
    fn bounds() {
        let b = lower(&Ref::MsgId(5), false);
        assert_eq!(b.after, Some(5));
        let b = upper(&Ref::MsgId(5), true);
        assert_eq!(b.before, Some(6));
        assert!(later(&Ref::MsgId(9), &Ref::MsgId(3)));
    }
}
