//! Numbers with their units, as the pages show them: counts with thousands
//! separators, tokens, dollars with cents (from integer micro-dollars), milliseconds,
//! percentages; and timestamps as `<time>` values (the script shows them in the
//! browser's zone, the title keeps UTC).

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn tokens(n: u64) -> String {
    format!("{} tokens", count(n))
}

/// Micro-dollars as dollars with cents; amounts under a cent keep four decimals so a
/// cheap request does not read as free.
pub fn dollars(micros: u64) -> String {
    if micros > 0 && micros < 10_000 {
        let mut s = format!("{:.6}", micros as f64 / 1e6);
        while s.ends_with('0') && s.len() > 6 {
            s.pop();
        }
        return format!("${s}");
    }
    let cents = (micros + 5_000) / 10_000;
    format!("${}.{:02}", count(cents / 100), cents % 100)
}

pub fn millis(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.is_finite() => format!("{} ms", count(v.round().max(0.0) as u64)),
        _ => "–".to_owned(),
    }
}

pub fn percent(p: Option<f64>) -> String {
    match p {
        Some(v) if v.is_finite() => format!("{v:.1} %"),
        _ => "–".to_owned(),
    }
}

/// A value of `metric` (an analytics metric name) with its unit.
pub fn metric_value(metric: &str, v: f64) -> String {
    let n = v.max(0.0).round() as u64;
    match metric {
        "cost_micros" | "saved_micros" | "potential_cost_micros" => dollars(n),
        "error_rate" => percent(Some(v * 100.0)),
        m if m.starts_with("latency") => millis(Some(v)),
        m if m.ends_with("tokens") => tokens(n),
        _ => count(n),
    }
}

/// A short axis label of `metric`: `1.2k`, `3.4M`, `$0.05`, `120 ms`.
pub fn axis_label(metric: &str, v: f64) -> String {
    match metric {
        "cost_micros" | "saved_micros" => {
            let d = v / 1e6;
            if v <= 0.0 {
                "$0".to_owned()
            } else if d >= 100.0 {
                format!("${d:.0}")
            } else if d >= 0.01 {
                format!("${d:.2}")
            } else {
                format!("${d:.4}")
            }
        }
        "error_rate" => format!("{:.0} %", v * 100.0),
        m if m.starts_with("latency") => format!("{v:.0} ms"),
        _ if v >= 1e6 => format!("{:.1}M", v / 1e6),
        _ if v >= 1e4 => format!("{:.0}k", v / 1e3),
        _ if v >= 1e3 => format!("{:.1}k", v / 1e3),
        _ if v.fract() == 0.0 => format!("{v:.0}"),
        _ => format!("{v:.1}"),
    }
}

/// An RFC 3339 instant as a page shows it before the script localises it:
/// `2026-12-02 13:05 UTC`.
pub fn utc_label(rfc3339: &str) -> String {
    let s = rfc3339.trim();
    if s.len() >= 16 && s.as_bytes().get(10) == Some(&b'T') {
        let zone = if s.ends_with('Z') || s.contains("+00:00") { " UTC" } else { "" };
        format!("{} {}{zone}", &s[..10], &s[11..16])
    } else {
        s.to_owned()
    }
}

/// A time for a template: the machine-readable value and the UTC label.
#[derive(Clone, Debug, Default)]
pub struct Time {
    pub iso: String,
    pub label: String,
}

impl Time {
    pub fn of(rfc3339: &str) -> Self {
        Self { iso: rfc3339.to_owned(), label: utc_label(rfc3339) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_carry_their_units() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(tokens(12500), "12,500 tokens");
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(42), "$0.000042");
        assert_eq!(dollars(4_200), "$0.0042");
        assert_eq!(dollars(1_234_567), "$1.23");
        assert_eq!(dollars(1_235_000_000), "$1,235.00");
        assert_eq!(millis(Some(12.4)), "12 ms");
        assert_eq!(millis(None), "–");
        assert_eq!(metric_value("error_rate", 0.25), "25.0 %");
        assert_eq!(metric_value("total_tokens", 10.0), "10 tokens");
        assert_eq!(axis_label("requests", 1500.0), "1.5k");
        assert_eq!(utc_label("2026-12-02T13:05:09Z"), "2026-12-02 13:05 UTC");
    }
}
