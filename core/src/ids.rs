//! Member and cluster ids, derived exactly as etcd derives them so that the same
//! `--initial-cluster` gives the same ids on Keel as on etcd.

use sha1::{Digest, Sha1};

/// A member's id: the first 8 bytes (big-endian) of SHA-1 over its peer URLs, sorted and
/// concatenated, followed by the cluster token.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    for url in urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    first_u64(&hasher.finalize())
}

/// The id etcd's MemberAdd gives a new member: the first 8 bytes (big-endian) of SHA-1 over its
/// peer URLs sorted and concatenated, the cluster name (empty for MemberAdd) and the time in
/// seconds since the epoch, in decimal (etcd's `computeMemberId` with `now`).
pub fn new_member_id(peer_urls: &[String], cluster_name: &str, unix_secs: u64) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hasher = Sha1::new();
    for url in urls {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_name.as_bytes());
    hasher.update(unix_secs.to_string().as_bytes());
    first_u64(&hasher.finalize())
}

/// The cluster's id: the first 8 bytes of SHA-1 over the member ids sorted ascending, each as
/// 8 big-endian bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against etcd 3.5.1 for its Procfile cluster (token `etcd-cluster-1`).
    #[test]
    fn procfile_cluster_ids_match_etcd() {
        let token = "etcd-cluster-1";
        let infra1 = member_id(&["http://127.0.0.1:12380".to_string()], token);
        let infra2 = member_id(&["http://127.0.0.1:22380".to_string()], token);
        let infra3 = member_id(&["http://127.0.0.1:32380".to_string()], token);
        assert_eq!(format!("{infra1:x}"), "8211f1d0f64f3269");
        assert_eq!(format!("{infra2:x}"), "91bc3c398fb3c146");
        assert_eq!(format!("{infra3:x}"), "fd422379fda50e48");
        assert_eq!(cluster_id(&[infra3, infra1, infra2]), 17237436991929493444);
    }

    #[test]
    fn new_member_id_hashes_the_time_after_the_urls() {
        let urls = vec!["http://127.0.0.1:2380".to_string()];
        assert_eq!(new_member_id(&urls, "t", 0), member_id(&urls, "t0"));
        assert_ne!(new_member_id(&urls, "", 1), new_member_id(&urls, "", 2));
    }

    #[test]
    fn member_id_ignores_url_order() {
        let a = vec!["http://b:1".to_string(), "http://a:1".to_string()];
        let b = vec!["http://a:1".to_string(), "http://b:1".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
    }
}
