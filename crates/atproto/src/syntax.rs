//! Protocol string formats: DID, handle, NSID, AT-URI, TID, record key,
//! datetime, language, CID, URI and at-identifier.
//!
//! Written by hand on purpose: the crates measured in `DEPENDENCIES.md` either
//! cover only some of the eleven lexicon formats (rsky-syntax has no language,
//! CID, URI or at-identifier check and allocates per call) or disagree with the
//! interop vectors (atproto-lexicon, jacquard-common). These checks run on the
//! ingest hot path for every string field with a `format`, so they are plain
//! byte scans with no allocation. They are tested against every vector in the
//! atproto interop suite (`tests/syntax_vectors.rs`).

use std::fmt;

use chrono::Datelike;

/// One of the string formats that lexicons can name in `format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    AtIdentifier,
    AtUri,
    Cid,
    Datetime,
    Did,
    Handle,
    Nsid,
    Tid,
    RecordKey,
    Uri,
    Language,
}

/// Each format with its lexicon name.
const FORMAT_NAMES: [(&str, Format); 11] = [
    ("at-identifier", Format::AtIdentifier),
    ("at-uri", Format::AtUri),
    ("cid", Format::Cid),
    ("datetime", Format::Datetime),
    ("did", Format::Did),
    ("handle", Format::Handle),
    ("nsid", Format::Nsid),
    ("tid", Format::Tid),
    ("record-key", Format::RecordKey),
    ("uri", Format::Uri),
    ("language", Format::Language),
];

impl Format {
    /// The format named by a lexicon's `format` value, if it is a known one.
    pub fn from_name(name: &str) -> Option<Format> {
        FORMAT_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }

    /// The lexicon name of this format.
    pub fn name(self) -> &'static str {
        FORMAT_NAMES
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every format is named")
    }

    /// Whether `s` is a valid value of this format.
    pub fn is_valid(self, s: &str) -> bool {
        match self {
            Format::AtIdentifier => is_valid_did(s) || is_valid_handle(s),
            Format::AtUri => is_valid_at_uri(s),
            Format::Cid => is_valid_cid_string(s),
            Format::Datetime => is_valid_datetime(s),
            Format::Did => is_valid_did(s),
            Format::Handle => is_valid_handle(s),
            Format::Nsid => is_valid_nsid(s),
            Format::Tid => is_valid_tid(s),
            Format::RecordKey => is_valid_record_key(s),
            Format::Uri => is_valid_uri(s),
            Format::Language => is_valid_language(s),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `did:method:identifier`, at most 2 KiB (atproto DID spec).
pub fn is_valid_did(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 2048 || !s.starts_with("did:") {
        return false;
    }
    let rest = &b[4..];
    let Some(colon) = rest.iter().position(|&c| c == b':') else {
        return false;
    };
    let (method, ident) = (&rest[..colon], &rest[colon + 1..]);
    if method.is_empty() || !method.iter().all(|c| c.is_ascii_lowercase()) || ident.is_empty() {
        return false;
    }
    if !ident
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'%' | b'-'))
    {
        return false;
    }
    !matches!(ident.last(), Some(b':') | Some(b'%'))
}

/// A DNS name of at least two labels whose last label starts with a letter.
pub fn is_valid_handle(s: &str) -> bool {
    if s.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last = "";
    for label in s.split('.') {
        if !is_dns_label(label) {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.as_bytes()[0].is_ascii_alphabetic()
}

fn is_dns_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Reversed domain authority plus a name segment: `com.example.fooBar`.
pub fn is_valid_nsid(s: &str) -> bool {
    if s.len() > 317 {
        return false;
    }
    let Some((authority, name)) = s.rsplit_once('.') else {
        return false;
    };
    if authority.split('.').count() < 2 || !authority.split('.').all(is_dns_label) {
        return false;
    }
    if !authority.as_bytes()[0].is_ascii_alphabetic() {
        return false;
    }
    let n = name.as_bytes();
    !n.is_empty()
        && n.len() <= 63
        && n[0].is_ascii_alphabetic()
        && n.iter().all(|c| c.is_ascii_alphanumeric())
}

/// 13 characters of base32-sortable, first one in `234567abcdefghij`.
pub fn is_valid_tid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && matches!(b[0], b'2'..=b'7' | b'a'..=b'j')
        && b.iter().all(|&c| matches!(c, b'2'..=b'7' | b'a'..=b'z'))
}

/// 1 to 512 characters of `[A-Za-z0-9._~:-]`, not `.` or `..`.
pub fn is_valid_record_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 512
        && s != "."
        && s != ".."
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b':' | b'-'))
}

/// `at://AUTHORITY[/COLLECTION[/RKEY]][#/FRAGMENT]`, at most 8 KiB.
pub fn is_valid_at_uri(s: &str) -> bool {
    if s.len() > 8 * 1024 {
        return false;
    }
    let Some(rest) = s.strip_prefix("at://") else {
        return false;
    };
    let (path, fragment) = match rest.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (rest, None),
    };
    if let Some(f) = fragment {
        let fb = f.as_bytes();
        if fb.first() != Some(&b'/')
            || !fb
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || b"._~:@!$&')(*+,;=%[]/-".contains(&c))
        {
            return false;
        }
    }
    let mut parts = path.split('/');
    let authority = parts.next().unwrap_or("");
    if !(is_valid_did(authority) || is_valid_handle(authority)) {
        return false;
    }
    if let Some(collection) = parts.next() {
        if !is_valid_nsid(collection) {
            return false;
        }
        if let Some(rkey) = parts.next() {
            if !is_valid_record_key(rkey) {
                return false;
            }
        }
    }
    parts.next().is_none()
}

/// The lexicon `cid` format: a plausible multibase CID string (CIDv0 `Qm…` excluded).
pub fn is_valid_cid_string(s: &str) -> bool {
    let b = s.as_bytes();
    (8..=256).contains(&b.len())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'=')
        && !s.starts_with("Qmb")
}

/// A generic URI: `scheme:rest`, no white space, at most 8 KiB.
pub fn is_valid_uri(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() > 8 * 1024 {
        return false;
    }
    let Some(colon) = b.iter().position(|&c| c == b':') else {
        return false;
    };
    let (scheme, rest) = (&b[..colon], &b[colon + 1..]);
    !scheme.is_empty()
        && scheme.len() <= 81
        && scheme[0].is_ascii_lowercase()
        && scheme[1..].iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+')
        })
        && !rest.is_empty()
        && rest.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// BCP-47 language tag, checked syntactically: a 2-3 letter lowercase primary
/// language (or `i`/`x`/`X` prefixes), then alphanumeric subtags.
pub fn is_valid_language(s: &str) -> bool {
    let mut parts = s.split('-');
    let first = parts.next().unwrap_or("");
    let fb = first.as_bytes();
    let primary_ok = matches!(first, "i" | "x" | "X")
        || ((2..=3).contains(&fb.len()) && fb.iter().all(|c| c.is_ascii_lowercase()));
    primary_ok
        && parts
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// RFC 3339 datetime as atproto restricts it: `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`,
/// uppercase `T` and `Z`, no `-00:00`, and a real calendar date and time.
pub fn is_valid_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 64 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !(digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 20 {
            return false;
        }
    }
    let tz = &s[i..];
    let tz_ok = tz == "Z"
        || (tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[1..3].iter().all(u8::is_ascii_digit)
            && tz.as_bytes()[3] == b':'
            && tz.as_bytes()[4..6].iter().all(u8::is_ascii_digit)
            && tz != "-00:00");
    if !tz_ok {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(u32::MAX);
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let (hour, minute, second) = (num(11..13), num(14..16), num(17..19));
    if hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let Some(date) = chrono::NaiveDate::from_ymd_opt(year as i32, month, day) else {
        return false;
    };
    if year == 0 && tz != "Z" {
        // Year 0 is valid, but not when the offset moves the instant before it.
        let sign = if tz.starts_with('-') { -1 } else { 1 };
        let offset = sign * (num(i + 1..i + 3) as i64 * 60 + num(i + 4..i + 6) as i64);
        let local = date
            .and_hms_opt(hour, minute, second.min(59))
            .expect("checked above");
        return (local - chrono::Duration::minutes(offset)).year() >= 0;
    }
    true
}
