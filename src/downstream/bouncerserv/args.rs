//! A command line's words and flags, split as soju splits them, and the address forms.

use std::collections::BTreeMap;

use super::{refuse, usage, Refusal};

/// One command line: the words before the flags, the flags (`-name value`, or `-admin`
/// alone for the switches) and the words after.
#[derive(Debug)]
pub(super) struct Args {
    pub(super) words: Vec<String>,
    pub(super) flags: BTreeMap<String, String>,
}

/// The flags of each command that take no value.
const SWITCHES: &[&str] = &["admin"];

impl Args {
    pub(super) fn parse(tokens: &[String], allowed: &[&str], usage: &str) -> Result<Args, Refusal> {
        let mut words = Vec::new();
        let mut flags = BTreeMap::new();
        let mut it = tokens.iter();
        while let Some(t) = it.next() {
            let Some(flag) = t.strip_prefix('-').filter(|f| !f.is_empty()) else {
                words.push(t.clone());
                continue;
            };
            let flag = flag.trim_start_matches('-').to_ascii_lowercase();
            if !allowed.contains(&flag.as_str()) {
                return Err(refuse(format!(
                    "unknown flag -{flag}; usage: {usage} (see \"help\")"
                )));
            }
            let value = if SWITCHES.contains(&flag.as_str()) {
                String::new()
            } else {
                it.next()
                    .cloned()
                    .ok_or_else(|| refuse(format!("-{flag} needs a value; usage: {usage}")))?
            };
            flags.insert(flag, value);
        }
        Ok(Args { words, flags })
    }

    pub(super) fn flag(&self, name: &str) -> Option<String> {
        self.flags.get(name).cloned()
    }
}

/// Splits a command line into words: spaces separate, `"…"` groups, `\` escapes.
pub(super) fn split(text: &str) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.extend(chars.next());
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(refuse("a quote is not closed"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A server address in soju's forms: `ircs://host[:port]` (TLS, port 6697 by
/// default), `irc+insecure://host[:port]` (plaintext, 6667), or `host[:port]` (TLS).
/// Returns `host:port` and whether TLS is on.
pub fn parse_addr(addr: &str) -> Result<(String, bool), String> {
    let (rest, tls) = match addr.split_once("://") {
        None => (addr, true),
        Some(("ircs", rest)) => (rest, true),
        Some(("irc+insecure", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(format!(
                "addr: unknown scheme {scheme:?}: use ircs://HOST:PORT, \
                 irc+insecure://HOST:PORT or HOST:PORT"
            ))
        }
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "addr: {addr:?}: expected ircs://HOST:PORT, irc+insecure://HOST:PORT or HOST:PORT"
        ));
    }
    // A port is given when a colon follows the host (and any `[v6]` brackets).
    let after_host = rest.rfind(']').map_or(rest, |i| &rest[i..]);
    if after_host.contains(':') {
        Ok((rest.to_owned(), tls))
    } else {
        let port = if tls { 6697 } else { 6667 };
        Ok((format!("{rest}:{port}"), tls))
    }
}

pub(super) fn no_words(a: &Args, command: &str) -> Result<(), Refusal> {
    match a.words.first() {
        None => Ok(()),
        Some(w) => Err(refuse(format!(
            "unexpected {w:?}; usage: {}",
            usage(command)
        ))),
    }
}

pub(super) fn one_word(a: &Args, command: &str) -> Result<String, Refusal> {
    match &a.words[..] {
        [one] => Ok(one.clone()),
        _ => Err(refuse(format!("usage: {}", usage(command)))),
    }
}

/// What soju takes and Ferry does not store: refused with what to do instead.
pub(super) fn unsupported(a: &Args) -> Result<(), Refusal> {
    if a.flags.contains_key("pass") {
        return Err(refuse(
            "-pass: Ferry does not send server passwords; use \"sasl set-plain\" for a \
             network account",
        ));
    }
    if a.flags.contains_key("connect-command") {
        return Err(refuse("-connect-command is not supported"));
    }
    Ok(())
}
