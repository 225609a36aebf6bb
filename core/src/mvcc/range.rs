//! etcd's key-range rules, shared by the store, the watch hub and the clients' helpers.

use bytes::Bytes;

/// Whether `key` is in etcd's range (`start`, `end`): an empty `end` selects `start` alone,
/// `end == "\0"` every key `>= start`, otherwise `[start, end)`.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented and the rest dropped; an all-0xff (or empty) prefix gives `"\0"` (no end).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_follows_etcd() {
        assert_eq!(&prefix_end(b"web")[..], b"wec");
        assert_eq!(&prefix_end(&[b'a', 0xff])[..], b"b");
        assert_eq!(&prefix_end(&[0xff, 0xff])[..], &[0]);
        assert!(in_range(b"web2", b"web", &prefix_end(b"web")));
        assert!(!in_range(b"wec", b"web", &prefix_end(b"web")));
        assert!(in_range(b"zzz", b"a", &[0]));
    }
}
