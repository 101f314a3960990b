//! Body templates: `${variable}` placeholders compiled once at load, rendered per rejection.
//!
//! Values are JSON-escaped (string content, no quotes added), so a template author writes
//! `"route":"${route}"` and a hostile path or request id can never break out of the
//! string. `${violated_policies}` is the one variable that renders a whole JSON value
//! (an array of names), for the problem+json default body.

use std::fmt::Write as _;

/// The variables a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// Seconds until the request would fit, rounded up, at least 1.
    RetryAfter,
    /// Milliseconds until the request would fit, rounded up.
    RetryAfterMs,
    /// The headline limit.
    Limit,
    /// Units left of the headline limit.
    Remaining,
    /// Reset in the configured header unit.
    Reset,
    /// Matched route name (`unmatched` when none).
    Route,
    /// The caller's plan.
    Plan,
    /// The request id sent upstream and returned.
    RequestId,
    /// RFC 3339 UTC, seconds: `2026-03-28T14:30:00Z`.
    Timestamp,
    /// RFC 3339 with microseconds and offset: `2025-07-14T11:00:00.000000+00:00`.
    TimestampMicros,
    /// Unix seconds.
    UnixTime,
    /// The response status code.
    Status,
    /// The request method.
    Method,
    /// The request path (without the query).
    Path,
    /// JSON array of the names of the limits that rejected the request.
    ViolatedPolicies,
}

impl Var {
    /// Every variable with its name, for parsing and documentation.
    pub const ALL: [(&'static str, Var); 15] = [
        ("retry_after", Var::RetryAfter),
        ("retry_after_ms", Var::RetryAfterMs),
        ("limit", Var::Limit),
        ("remaining", Var::Remaining),
        ("reset", Var::Reset),
        ("route", Var::Route),
        ("plan", Var::Plan),
        ("request_id", Var::RequestId),
        ("timestamp", Var::Timestamp),
        ("timestamp_micros", Var::TimestampMicros),
        ("unix_time", Var::UnixTime),
        ("status", Var::Status),
        ("method", Var::Method),
        ("path", Var::Path),
        ("violated_policies", Var::ViolatedPolicies),
    ];

    fn by_name(name: &str) -> Option<Var> {
        Var::ALL.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A compiled body template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    static_len: usize,
}

/// Supplies variable values at render time; writes raw (unescaped) text.
pub trait Values {
    /// Writes the value of `var` into `out`, unescaped.
    fn write(&self, var: Var, out: &mut String);
}

impl Template {
    /// Compiles `source`; an unknown or unterminated placeholder is an error.
    pub fn compile(source: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        let mut text = String::new();
        while let Some(start) = rest.find("${") {
            text.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated placeholder \"${{{after}\""))?;
            let name = after[..end].trim();
            let var = Var::by_name(name).ok_or_else(|| {
                let known: Vec<_> = Var::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown template variable \"{name}\"; known: {}",
                    known.join(", ")
                )
            })?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(var));
            rest = &after[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let static_len = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Var(_) => 16,
            })
            .sum();
        Ok(Self { pieces, static_len })
    }

    /// Renders with JSON-escaped values.
    pub fn render(&self, values: &dyn Values) -> String {
        let mut out = String::with_capacity(self.static_len);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Var(Var::ViolatedPolicies) => values.write(Var::ViolatedPolicies, &mut out),
                Piece::Var(var) => {
                    // Written in place and escaped only when it must be (numbers, dates and
                    // request ids never need it).
                    let start = out.len();
                    values.write(*var, &mut out);
                    if needs_escape(&out[start..]) {
                        let raw = out.split_off(start);
                        escape_json_into(&raw, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Whether the template uses `var` (to skip computing unused values).
    pub fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }
}

/// Whether `value` has a character `escape_json_into` changes (or may: 0xE2 starts U+2028
/// and U+2029, and other characters too). A byte scan, so cheap for the common none.
fn needs_escape(value: &str) -> bool {
    value
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0xE2)
}

/// Appends `value` escaped as JSON string content (RFC 8259 §7).
pub fn escape_json_into(value: &str, out: &mut String) {
    if !needs_escape(value) {
        out.push_str(value);
        return;
    }
    // Runs of characters that need no escape (nearly all of them) are copied whole.
    let mut plain = 0;
    for (at, c) in value.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => "",
            _ => continue,
        };
        out.push_str(&value[plain..at]);
        plain = at + c.len_utf8();
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escaped);
        }
    }
    out.push_str(&value[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Values for Fixed {
        fn write(&self, var: Var, out: &mut String) {
            match var {
                Var::RetryAfter => out.push_str("12"),
                Var::Route => out.push_str("send\"\\\n\u{1}"),
                Var::ViolatedPolicies => out.push_str("[\"send\"]"),
                _ => out.push('?'),
            }
        }
    }

    #[test]
    fn renders_and_escapes() {
        let t = Template::compile(
            r#"{"retry":${retry_after},"route":"${route}","p":${violated_policies}}"#,
        )
        .unwrap();
        assert_eq!(
            t.render(&Fixed),
            r#"{"retry":12,"route":"send\"\\\n\u0001","p":["send"]}"#
        );
        assert!(t.uses(Var::Route));
        assert!(!t.uses(Var::Plan));
    }

    #[test]
    fn escaped_values_parse_back_as_json_strings() {
        for value in [
            "",
            "plain",
            "é\u{2028}x\u{2029}",
            "\u{1}\t\r\n\"\\",
            "a\u{1f}b\u{7f}",
        ] {
            let mut out = String::from("\"");
            escape_json_into(value, &mut out);
            out.push('"');
            assert_eq!(
                serde_json::from_str::<String>(&out).unwrap(),
                value,
                "{out}"
            );
            assert!(!out.contains('\u{2028}') && !out.contains('\u{2029}'));
        }
    }

    #[test]
    fn literal_text_passes_unchanged() {
        let body = r#"{"statusCode":429,"message":"ThrottlerException: Too Many Requests","error":"Too Many Requests"}"#;
        assert_eq!(Template::compile(body).unwrap().render(&Fixed), body);
        assert_eq!(Template::compile("").unwrap().render(&Fixed), "");
    }

    #[test]
    fn placeholder_errors_are_named() {
        assert!(Template::compile("${nope}")
            .unwrap_err()
            .starts_with("unknown template variable \"nope\"; known: retry_after"));
        assert_eq!(
            Template::compile("x ${route").unwrap_err(),
            "unterminated placeholder \"${route\""
        );
        assert_eq!(
            Template::compile("${ retry_after }")
                .unwrap()
                .render(&Fixed),
            "12"
        );
    }

    #[test]
    fn every_variable_name_parses() {
        for (name, var) in Var::ALL {
            let t = Template::compile(&format!("${{{name}}}")).unwrap();
            assert!(t.uses(var));
        }
    }
}
