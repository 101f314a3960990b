//! Header lookups sized for the maps requests carry.
//!
//! `HeaderMap::get` hashes the name and probes, ~110–170 instructions even for a map of two
//! headers (callgrind), and the request path looks up five names per request (the key,
//! the request id, `Host`, `Connection` twice). A request carries a handful of headers:
//! comparing the names in order is cheaper up to [`SCAN_UP_TO`] of them, and the map's own
//! lookup takes over above that.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Most headers a lookup compares one by one.
const SCAN_UP_TO: usize = 8;

/// The first value of `name`, as `HeaderMap::get`.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > SCAN_UP_TO {
        return headers.get(name);
    }
    headers
        .iter()
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// Every value of `name` in order, as `HeaderMap::get_all`.
pub fn get_all<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n HeaderName,
) -> impl Iterator<Item = &'a HeaderValue> + use<'a, 'n> {
    let scan = headers.len() <= SCAN_UP_TO;
    // Both ways chained in one iterator, the unused one empty (an `Option` of each measured
    // 75 instructions more per request).
    let scanned = headers
        .iter()
        .take(if scan { usize::MAX } else { 0 })
        .filter_map(move |(key, value)| (key == name).then_some(value));
    let hashed = (!scan).then(|| headers.get_all(name).iter());
    scanned.chain(hashed.into_iter().flatten())
}

/// The value of `name` when the request has at most one (`Ok(None)`: none); `Err(())`
/// when it has two or more, which is ambiguous for a field read as one value.
#[allow(clippy::result_unit_err)]
pub fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, ()> {
    let mut found = None;
    if headers.len() > SCAN_UP_TO {
        let mut values = headers.get_all(name).iter();
        found = values.next();
        return if values.next().is_some() {
            Err(())
        } else {
            Ok(found)
        };
    }
    for (key, value) in headers {
        if key == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(value);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, HOST};

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn small_and_large_maps_answer_as_the_map_does() {
        let custom = HeaderName::from_static("x-api-key");
        let mut pairs = vec![
            ("host", "a"),
            ("connection", "keep-alive"),
            ("x-api-key", "k1"),
            ("connection", "te"),
            ("x-api-key", "k2"),
        ];
        for _ in 0..2 {
            let headers = map(&pairs);
            for name in [
                &HOST,
                &CONNECTION,
                &custom,
                &HeaderName::from_static("absent"),
            ] {
                assert_eq!(get(&headers, name), headers.get(name), "{name}");
                let all: Vec<_> = get_all(&headers, name).collect();
                let expected: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(all, expected, "{name}");
                let single = match expected[..] {
                    [] => Ok(None),
                    [one] => Ok(Some(one)),
                    _ => Err(()),
                };
                assert_eq!(self::single(&headers, name), single, "{name}");
            }
            // The second round goes past SCAN_UP_TO, to the map's own lookup.
            pairs.extend(std::iter::repeat_n(("x-filler", "f"), SCAN_UP_TO));
        }
    }
}
