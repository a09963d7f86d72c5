//! What a real Apache makes of the live map: it caches every answer of a
//! `rnd:` map per child, keyed by the file's mtime alone, so two versions
//! with the same mtime would leave the second unseen. The writer gives every
//! version a strictly later mtime; here its clock is pinned, as a coarse
//! kernel clock would be for two publishes in a row.

use e2e::apache::MiniApache;
use e2e::request;
use image_launcher::livemap::{LiveMap, Publisher};

/// A fixed instant, in microseconds since the epoch.
fn pinned_clock() -> i64 {
    1_796_000_000_000_000
}

fn looked_up(apache: &MiniApache, key: &str) -> String {
    let response = request(apache.addr, &format!("/look/{key}"), &[]).expect("request");
    assert_eq!(response.status, 302, "{response:?}\n{}", apache.error_log());
    let location = response.header("location").expect("a Location").to_owned();
    location.rsplit('/').next().unwrap_or_default().to_owned()
}

#[test]
fn two_versions_published_within_one_clock_tick_are_both_seen_by_apache() {
    let map_dir = tempfile::tempdir().expect("tempdir");
    let path = map_dir.path().join("live.map");
    let mut publisher = Publisher::with_clock(path.clone(), pinned_clock);
    let one = |port| LiveMap {
        servers: vec![("app1".into(), port)],
        all: Some(vec![port]),
        ..LiveMap::default()
    };
    publisher.publish(&one(1111)).expect("publish");
    // One child, so that the cache the second lookup hits is the first's.
    let apache = MiniApache::start(&format!(
        "StartServers 1\nServerLimit 1\nThreadsPerChild 4\nMaxRequestWorkers 4\n\
         RewriteEngine On\nRewriteMap LIVE \"rnd:{}\"\n\
         RewriteRule \"^/look/(.+)$\" \"/found/${{LIVE:$1|none}}\" [R=302,L]",
        path.display()
    ));
    assert_eq!(looked_up(&apache, "app1"), "1111");
    assert_eq!(looked_up(&apache, "ALL"), "1111");
    assert_eq!(looked_up(&apache, "app2"), "none");
    // The same pinned clock: a writer that used it as the mtime would give
    // this version the first one's, and Apache would keep answering 1111.
    publisher.publish(&one(2222)).expect("publish");
    assert_eq!(looked_up(&apache, "app1"), "2222");
    assert_eq!(looked_up(&apache, "ALL"), "2222");
    publisher.publish(&one(3333)).expect("publish");
    assert_eq!(looked_up(&apache, "app1"), "3333");
}
