//! The IRC protocol: bytes → lines (`codec`) → `Message` (tags, prefix, a typed
//! `Command`, params as bytes) → typed helpers (`numeric`, `isupport`, `casemap`,
//! `split`, `ctcp`).
//!
//! Nothing here does I/O or knows about users; it never panics on any input.

mod casemap;
pub mod codec;
mod command;
pub mod ctcp;
mod isupport;
mod message;
pub mod numeric;
pub mod split;
pub mod time;

pub use casemap::Casemapping;
pub use codec::{Frame, LineCodec, MAX_LINE_LEN};
pub use command::Command;
pub use isupport::ISupport;
pub use message::{decode, is_word, parse_tag_list, write_tag_list, Message, ParseError, Tag};
pub use numeric::Numeric;
