//! Read markers, the same for every door: one per buffer, the id (seq) of the last
//! message the user read there, and it only moves forward (the store keeps the
//! larger). The web client moves it by id (`read` on the websocket, `POST
//! /api/read`); IRC clients with `draft/read-marker` by time (`MARKREAD <target>
//! timestamp=…`), which maps to the newest message of the buffer at or before that
//! time, and back to that message's time. Times are in milliseconds: lines that
//! share the millisecond of a `MARKREAD` are all read by it (as `time <= T` reads
//! them in soju).
//!
//! Whichever door moves a marker, [`mark_read`] tells the others: the user's other
//! websockets (`read` events, through `Sockets`), the user's IRC clients on that
//! network that negotiated `draft/read-marker` (`MARKREAD`, through the actors'
//! `Watchers`), and Web Push (a read buffer's notifications stop).

use chrono::{DateTime, Utc};

use crate::irc;
use crate::services::{Control, Registration, Services};
use crate::store::{Buffer, HistoryQuery, NetworkId, Seq, StoreError, UserId};
use crate::user::{watch, Notice};

/// Moves the marker of `buffer` (of `network`, by id and name, of `user`) to `seq` unless it is
/// already there or beyond. Returns the marker now. `skip` is the websocket that
/// asked, which is not told again.
///
/// # Errors
/// A store error; nothing is announced then.
pub async fn mark_read(
    services: &Services,
    user: UserId,
    network: (NetworkId, &str),
    buffer: &Buffer,
    seq: Seq,
    skip: Option<&Registration>,
) -> Result<Seq, StoreError> {
    let (network_id, network_name) = network;
    services
        .store
        .set_read_marker(network_id, &buffer.key, seq)
        .await?;
    if let Some(push) = &services.push {
        push.note_read(network_id, &buffer.key, seq);
    }
    let now = buffer.read_marker.max(seq);
    let name = irc::decode(&buffer.name).into_owned();
    let c = Control::Read {
        network: network_name.to_owned(),
        buffer: name,
        id: now,
    };
    services.sockets.send(user, c, skip);
    if now > buffer.read_marker {
        let time = marker_time(services, user, network_id, &buffer.key, now).await?;
        let msg = markread(&buffer.name, time);
        let notice = Notice {
            cap: watch::READ_MARKER,
            network: Some(network_id),
            msg,
        };
        services.users.config().watchers.send(user, notice);
    }
    Ok(now)
}

/// `MARKREAD <target> timestamp=…` (or `*` when nothing is read), without a prefix.
pub fn markread(target: &[u8], time: Option<DateTime<Utc>>) -> irc::Message {
    let criteria = match time {
        Some(t) => format!("timestamp={}", irc::time::format(t)),
        None => "*".to_owned(),
    };
    irc::Message::new(
        "MARKREAD",
        [
            bytes::Bytes::copy_from_slice(target),
            bytes::Bytes::from(criteria),
        ],
    )
}

/// The time of the marker `seq` in a buffer: that of its newest message at or before
/// `seq`; `None` when the marker is before every message (nothing read).
pub async fn marker_time(
    services: &Services,
    user: UserId,
    network: NetworkId,
    key: &[u8],
    seq: Seq,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    if seq <= 0 {
        return Ok(None);
    }
    let rows = services
        .store
        .history(&HistoryQuery {
            user,
            network: Some(network),
            buffer_key: Some(key.to_vec()),
            before: Some(seq + 1),
            limit: 1,
            newest_first: true,
            ..HistoryQuery::default()
        })
        .await?;
    Ok(rows.first().map(|m| m.time))
}

/// The marker that reads a buffer up to `time`: its newest message at or before it
/// (server times are in milliseconds, as the store keeps them); `None` when no
/// message is that old.
pub async fn seq_at(
    services: &Services,
    user: UserId,
    network: NetworkId,
    key: &[u8],
    time: DateTime<Utc>,
) -> Result<Option<Seq>, StoreError> {
    let rows = services
        .store
        .history(&HistoryQuery {
            user,
            network: Some(network),
            buffer_key: Some(key.to_vec()),
            to: Some(time),
            limit: 1,
            newest_first: true,
            ..HistoryQuery::default()
        })
        .await?;
    Ok(rows.first().map(|m| m.seq))
}
