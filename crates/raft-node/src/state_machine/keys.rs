//! How the state machine lays out its keys in the engine.
//!
//! User keys are stored behind the prefix byte `0x01`; the node's own
//! records (exactly-once sessions) live behind `0x00`, so no user key can
//! collide with them and a user range scan never sees them.

use std::ops::Bound;

/// Prefix of every user key.
const USER_PREFIX: u8 = 0x01;
/// Prefix of every session record: `0x00 's' client_id (u64 big-endian)`.
const SESSION_PREFIX: [u8; 2] = [0x00, b's'];

/// The engine key of user key `key`.
pub fn user_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(USER_PREFIX);
    out.extend_from_slice(key);
    out
}

/// The user key of engine key `stored` (which must be a user key).
pub fn strip_user_prefix(stored: &[u8]) -> &[u8] {
    assert_eq!(
        stored.first(),
        Some(&USER_PREFIX),
        "engine key outside the user keyspace"
    );
    &stored[1..]
}

/// Engine bounds for the user range `[start, end)`; an empty `end` means
/// "to the end of the user keyspace".
pub fn user_range(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let lower = user_key(start);
    let upper = if end.is_empty() {
        vec![USER_PREFIX + 1]
    } else {
        user_key(end)
    };
    (lower, upper)
}

/// Turns owned bounds into the borrowed form `Db::scan` takes.
pub fn bounds<'a>(lower: &'a [u8], upper: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(lower), Bound::Excluded(upper))
}

/// The engine key of `client_id`'s session.
pub fn session_key(client_id: u64) -> Vec<u8> {
    let mut out = SESSION_PREFIX.to_vec();
    out.extend_from_slice(&client_id.to_be_bytes());
    out
}

/// Engine bounds covering every session record.
pub fn session_range() -> (Vec<u8>, Vec<u8>) {
    (SESSION_PREFIX.to_vec(), vec![SESSION_PREFIX[0], SESSION_PREFIX[1] + 1])
}

/// The client id of a session key, `None` if malformed.
pub fn session_client_id(stored: &[u8]) -> Option<u64> {
    let id = stored.strip_prefix(&SESSION_PREFIX[..])?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ranges_cover_exactly_the_user_keyspace() {
        // A full user scan must see every user key and no session record.
        let (lower, upper) = user_range(b"", b"");
        let inside = |k: &[u8]| lower.as_slice() <= k && k < upper.as_slice();
        assert!(inside(&user_key(b"")));
        assert!(inside(&user_key(&[0xff; 10])));
        assert!(!inside(&session_key(7)));
        assert_eq!(session_client_id(&session_key(7)), Some(7));
        assert_eq!(strip_user_prefix(&user_key(b"abc")), b"abc");
    }
}
