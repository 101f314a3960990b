//! The `/metrics` text: the exporter's families and the request-path histograms in one
//! order that holds from scrape to scrape (families by name, series by their labels), so
//! `grep` and a diff of two scrapes read well. The exporter keeps its series in hash maps
//! and prints them in whatever order those iterate.

use metrics_exporter_prometheus::PrometheusHandle;

use super::durations;

/// Everything `/metrics` shows, sorted.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    durations::render(&mut text);
    sorted(&text)
}

/// One metric family: its `# HELP`/`# TYPE` lines and its samples.
struct Family<'a> {
    name: &'a str,
    comments: Vec<&'a str>,
    samples: Vec<&'a str>,
}

/// `text` with its families sorted by name and each family's series by their labels. A
/// histogram series' lines (its buckets, sum and count) keep their order: they sort as one.
fn sorted(text: &str) -> String {
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        let comment = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "));
        let name = match comment {
            Some(rest) => rest.split(' ').next().unwrap_or_default(),
            None if line.starts_with('#') => "",
            None => match families.last() {
                Some(family) => family.name,
                None => line.split(['{', ' ']).next().unwrap_or_default(),
            },
        };
        if families.last().is_none_or(|family| family.name != name) {
            families.push(Family {
                name,
                comments: Vec::new(),
                samples: Vec::new(),
            });
        }
        let family = families.last_mut().expect("pushed above");
        if line.starts_with('#') {
            family.comments.push(line);
        } else {
            family.samples.push(line);
        }
    }
    families.sort_by_key(|family| family.name);
    let mut out = String::with_capacity(text.len() + families.len());
    for mut family in families {
        family.samples.sort_by_cached_key(|sample| series(sample));
        for line in family.comments.iter().chain(&family.samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// A sample's labels, without braces and without `le` (always the last label where there
/// is one): the same for every line of one histogram series.
fn series(sample: &str) -> &str {
    let Some(open) = sample.find('{') else {
        return "";
    };
    let close = sample.rfind('}').unwrap_or(sample.len());
    let labels = &sample[open + 1..close.max(open + 1)];
    match labels.rfind("le=\"") {
        Some(0) => "",
        Some(at) if labels.as_bytes()[at - 1] == b',' => &labels[..at - 1],
        _ => labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_sort_by_name_and_series_by_labels_keeping_histogram_lines_together() {
        let text = "\
# TYPE z_total counter
z_total{route=\"b\"} 2
z_total{route=\"a\"} 1

# HELP h_seconds Help.
# TYPE h_seconds histogram
h_seconds_bucket{route=\"b\",le=\"0.5\"} 1
h_seconds_bucket{route=\"b\",le=\"+Inf\"} 1
h_seconds_sum{route=\"b\"} 0.2
h_seconds_count{route=\"b\"} 1
h_seconds_bucket{route=\"a\",le=\"0.5\"} 0
h_seconds_bucket{route=\"a\",le=\"+Inf\"} 0
h_seconds_sum{route=\"a\"} 0
h_seconds_count{route=\"a\"} 0

# TYPE a_seconds histogram
a_seconds_bucket{le=\"0.5\"} 0
a_seconds_bucket{le=\"+Inf\"} 0
a_seconds_sum 0
a_seconds_count 0
";
        assert_eq!(
            sorted(text),
            "\
# TYPE a_seconds histogram
a_seconds_bucket{le=\"0.5\"} 0
a_seconds_bucket{le=\"+Inf\"} 0
a_seconds_sum 0
a_seconds_count 0

# HELP h_seconds Help.
# TYPE h_seconds histogram
h_seconds_bucket{route=\"a\",le=\"0.5\"} 0
h_seconds_bucket{route=\"a\",le=\"+Inf\"} 0
h_seconds_sum{route=\"a\"} 0
h_seconds_count{route=\"a\"} 0
h_seconds_bucket{route=\"b\",le=\"0.5\"} 1
h_seconds_bucket{route=\"b\",le=\"+Inf\"} 1
h_seconds_sum{route=\"b\"} 0.2
h_seconds_count{route=\"b\"} 1

# TYPE z_total counter
z_total{route=\"a\"} 1
z_total{route=\"b\"} 2

"
        );
    }

    #[test]
    fn a_label_value_ending_in_le_is_not_taken_for_the_bucket_bound() {
        assert_eq!(series("x{route=\"rule=\"} 1"), "route=\"rule=\"");
        assert_eq!(series("x_bucket{a=\"1\",le=\"2\"} 1"), "a=\"1\"");
        assert_eq!(series("x_sum{a=\"1\"} 1"), "a=\"1\"");
        assert_eq!(series("x_bucket{le=\"2\"} 1"), "");
        assert_eq!(series("x 1"), "");
    }
}
