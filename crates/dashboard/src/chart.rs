//! Charts drawn on the server as inline SVG: time series as lines (one per group,
//! at most eight colours, a legend), each point with a `<title>` for hover and
//! screen readers, and quota bars. No script draws anything; the SVG scales with
//! its box (`viewBox`), so one drawing serves a phone and a desktop.

use crate::format::axis_label;

/// One named line of points `(instant as RFC 3339, value)`; `None` is a gap.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(String, Option<f64>)>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;
const COLOURS: usize = 8;

/// Escapes text for SVG/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A line chart of `series` in `metric`'s unit, titled `title` for assistive
/// technology. `data-total` carries the sum of every point (tests and scripts read it).
pub fn line_chart(title: &str, metric: &str, series: &[Series]) -> String {
    let n = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    let values = || series.iter().flat_map(|s| s.points.iter().filter_map(|p| p.1)).filter(|v| v.is_finite());
    let total = values().fold(0.0f64, |a, b| a + b);
    let max = values().fold(0.0f64, f64::max);
    let top = nice_ceiling(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |i: usize| if n <= 1 { LEFT + plot_w / 2.0 } else { LEFT + plot_w * i as f64 / (n - 1) as f64 };
    let y = |v: f64| TOP + plot_h - plot_h * (v / top);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" data-total=\"{}\" \
         data-metric=\"{}\" preserveAspectRatio=\"xMidYMid meet\">",
        escape(title),
        total,
        escape(metric)
    );
    // Grid and y labels at 0, half and the top.
    // An empty chart has no scale to show: its zero line only.
    let fracs: &[f64] = if max > 0.0 { &[0.0, 0.5, 1.0] } else { &[0.0] };
    for &frac in fracs {
        let gy = y(top * frac);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            escape(&axis_label(metric, top * frac))
        ));
    }
    // X labels: the first, middle and last instants.
    if let Some(longest) = series.iter().max_by_key(|s| s.points.len()) {
        let picks: &[usize] = if n > 2 {
            &[0, n / 2, n - 1]
        } else if n == 2 {
            &[0, 1]
        } else {
            &[0]
        };
        for (k, &i) in picks.iter().enumerate() {
            if let Some((t, _)) = longest.points.get(i) {
                let anchor = if picks.len() > 1 && k == 0 {
                    "start"
                } else if k + 1 == picks.len() && picks.len() > 1 {
                    "end"
                } else {
                    "middle"
                };
                svg.push_str(&format!(
                    "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                    x(i),
                    HEIGHT - 6.0,
                    escape(&short_time(t))
                ));
            }
        }
    }
    for (k, s) in series.iter().enumerate() {
        let class = format!("s{}", k % COLOURS);
        let mut path = String::new();
        let mut pen_down = false;
        for (i, (_, v)) in s.points.iter().enumerate() {
            match v {
                Some(v) if v.is_finite() => {
                    path.push_str(&format!("{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, x(i), y(*v)));
                    pen_down = true;
                }
                _ => pen_down = false,
            }
        }
        if !path.is_empty() {
            svg.push_str(&format!("<path class=\"line {class}\" d=\"{}\"/>", path.trim_end()));
        }
        for (i, (t, v)) in s.points.iter().enumerate() {
            if let Some(v) = v.filter(|v| v.is_finite() && *v > 0.0) {
                svg.push_str(&format!(
                    "<circle class=\"dot {class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}: {} at {}</title></circle>",
                    x(i),
                    y(v),
                    escape(&s.name),
                    escape(&crate::format::metric_value(metric, v)),
                    escape(&crate::format::utc_label(t))
                ));
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The legend entries of a chart: (name, colour class).
pub fn legend(series: &[Series]) -> Vec<(String, String)> {
    series.iter().enumerate().map(|(k, s)| (s.name.clone(), format!("s{}", k % COLOURS))).collect()
}

/// A quota bar: the share used, capped at 100, with its class (`ok`, `warn` at 80 %,
/// `over` at 100 %).
pub fn quota_bar(percent: f64) -> String {
    let shown = if percent.is_finite() { percent.clamp(0.0, 100.0) } else { 100.0 };
    format!(
        "<svg class=\"bar\" viewBox=\"0 0 100 6\" preserveAspectRatio=\"none\" aria-hidden=\"true\">\
         <rect class=\"track\" width=\"100\" height=\"6\" rx=\"3\"/>\
         <rect class=\"fill {}\" width=\"{shown:.1}\" height=\"6\" rx=\"3\"/></svg>",
        bar_class(percent)
    )
}

pub fn bar_class(percent: f64) -> &'static str {
    if !percent.is_finite() || percent >= 100.0 {
        "over"
    } else if percent >= 80.0 {
        "warn"
    } else {
        "ok"
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `max` (1 for an empty chart).
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// `2026-12-02T13:00:00Z` → `12-02 13:00`; a day (`…T00:00:00…`) → `12-02`.
fn short_time(t: &str) -> String {
    if t.len() >= 16 && t.as_bytes().get(10) == Some(&b'T') {
        let time = &t[11..16];
        if time == "00:00" { t[5..10].to_owned() } else { format!("{} {time}", &t[5..10]) }
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, values: &[Option<f64>]) -> Series {
        Series {
            name: name.into(),
            points: values.iter().enumerate().map(|(i, v)| (format!("2026-12-02T{i:02}:00:00Z"), *v)).collect(),
        }
    }

    #[test]
    fn a_chart_draws_each_series_with_gaps_and_escapes_names() {
        let svg = line_chart("Requests", "requests", &[series("<b>", &[Some(1.0), None, Some(3.0), Some(4.0)])]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("data-total=\"8\""));
        assert!(svg.contains("&lt;b&gt;"));
        assert!(!svg.contains("<b>"));
        // The gap starts a new sub-path.
        assert_eq!(svg.matches("d=\"M").count(), 1);
        assert!(svg.contains(" M"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3);
    }

    #[test]
    fn an_empty_chart_is_still_a_chart() {
        let svg = line_chart("Cost", "cost_micros", &[]);
        assert!(svg.contains("data-total=\"0\""));
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn bars_turn_amber_at_80_and_red_at_100_percent() {
        assert_eq!(bar_class(79.9), "ok");
        assert_eq!(bar_class(80.0), "warn");
        assert_eq!(bar_class(100.0), "over");
        assert!(quota_bar(250.0).contains("width=\"100.0\""));
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
