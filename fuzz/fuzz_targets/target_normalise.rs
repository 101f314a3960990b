//! The canonical request target (`src/target.rs`) on arbitrary paths and settings: it never
//! panics, what it returns is a valid request path that a second pass leaves as it is
//! (borrowed), and a request whose target it accepts keeps its canonical target when
//! normalised again. Run: `cargo +nightly fuzz run target_normalise` (from the repo root).

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use sluice::target::{EncodedSlashes, Normaliser};

fuzz_target!(|data: &[u8]| {
    let Some((&switches, path)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let normaliser = Normaliser {
        percent_encoding: switches & 1 != 0,
        dot_segments: switches & 2 != 0,
        merge_slashes: switches & 4 != 0,
        encoded_slashes: match (switches >> 3) % 3 {
            0 => EncodedSlashes::Reject,
            1 => EncodedSlashes::Decode,
            _ => EncodedSlashes::Keep,
        },
        ..Normaliser::default()
    };
    if let Ok(canonical) = normaliser.path(path) {
        if path.starts_with('/') {
            assert!(canonical.starts_with('/'), "{path:?} -> {canonical:?}");
        }
        let again = normaliser.path(&canonical).expect("a canonical path is accepted");
        assert!(matches!(again, Cow::Borrowed(_)), "{path:?} -> {canonical:?} -> {again:?}");
        assert_eq!(again, canonical);
        if normaliser.percent_encoding && path.starts_with('/') {
            http::uri::PathAndQuery::try_from(&*canonical).expect("a valid request path");
        }
    }

    // The whole request: whatever http parses as a target.
    let Ok(uri) = http::Uri::try_from(path) else {
        return;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.uri = uri;
    if normaliser.apply(&mut parts).is_ok() {
        let once = parts.uri.clone();
        normaliser.apply(&mut parts).expect("a canonical request is accepted");
        assert_eq!(parts.uri, once);
    }
});
