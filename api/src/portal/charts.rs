//! Charts as SVG, drawn on the server with integer arithmetic: readable without JavaScript,
//! scaled by the browser (`viewBox`), each with a title and a description for screen readers.

use maud::{html, Markup};

const WIDTH: i64 = 640;
const HEIGHT: i64 = 220;
const LEFT: i64 = 64;
const RIGHT: i64 = 12;
const TOP: i64 = 12;
const BOTTOM: i64 = 36;

/// One bar or point: its label and value.
#[derive(Debug, Clone)]
pub struct Datum {
    pub label: String,
    pub value: i128,
}

/// A nice upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_max(max: i128) -> i128 {
    if max <= 0 {
        return 1;
    }
    let mut step: i128 = 1;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= max {
                return step.saturating_mul(m);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn scale(value: i128, max: i128, span: i64) -> i64 {
    if max <= 0 {
        return 0;
    }
    let scaled = value.clamp(0, max).saturating_mul(i128::from(span)) / max;
    i64::try_from(scaled).unwrap_or(0)
}

fn axis(max: i128, unit: &dyn Fn(i128) -> String) -> Markup {
    let plot = HEIGHT - TOP - BOTTOM;
    html! {
        @for i in 0..=4i64 {
            @let y = TOP + plot - plot * i / 4;
            line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y) y2=(y) stroke="#e3e7ee" {}
            text x=(LEFT - 6) y=(y + 4) text-anchor="end" { (unit(max * i128::from(i) / 4)) }
        }
    }
}

/// A bar chart of `data`, values shown with `unit`.
pub fn bars(title: &str, data: &[Datum], unit: &dyn Fn(i128) -> String) -> Markup {
    let max = nice_max(data.iter().map(|d| d.value).max().unwrap_or(0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = i64::try_from(data.len().max(1)).unwrap_or(1);
    let slot = plot_w / n;
    let bar = (slot * 7 / 10).max(1);
    let every = (n / 8).max(1);
    let summary: Vec<String> = data
        .iter()
        .map(|d| format!("{}: {}", d.label, unit(d.value)))
        .collect();
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
            title { (title) }
            desc { (summary.join("; ")) }
            (axis(max, unit))
            @for (i, d) in data.iter().enumerate() {
                @let i = i64::try_from(i).unwrap_or(0);
                @let h = scale(d.value, max, plot_h);
                @let x = LEFT + i * slot + (slot - bar) / 2;
                rect x=(x) y=(TOP + plot_h - h) width=(bar) height=(h) fill="#2457c5" {
                    title { (d.label) ": " (unit(d.value)) }
                }
                @if i % every == 0 {
                    text x=(x + bar / 2) y=(HEIGHT - BOTTOM + 16) text-anchor="middle" { (short(&d.label, slot * every)) }
                }
            }
        }
    }
}

/// A line through `points` (x in 0..=`x_max`, y scaled to the largest y), with `x_labels` at
/// their x; `marker` draws a dot at one x (say, now).
pub fn line(
    title: &str,
    points: &[(i128, i128)],
    x_max: i128,
    x_labels: &[(i128, String)],
    marker: Option<i128>,
    unit: &dyn Fn(i128) -> String,
) -> Markup {
    let y_max = nice_max(points.iter().map(|p| p.1).max().unwrap_or(0));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let at = |(x, y): (i128, i128)| {
        (
            LEFT + scale(x, x_max, plot_w),
            TOP + plot_h - scale(y, y_max, plot_h),
        )
    };
    let path: Vec<String> = points
        .iter()
        .map(|p| {
            let (x, y) = at(*p);
            format!("{x},{y}")
        })
        .collect();
    let marked = marker.and_then(|mx| {
        points
            .iter()
            .min_by_key(|(x, _)| (x - mx).abs())
            .map(|p| at(*p))
    });
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
            title { (title) }
            (axis(y_max, unit))
            polyline points=(path.join(" ")) fill="none" stroke="#2457c5" stroke-width="2" {}
            @for (x, label) in x_labels {
                @let (px, _) = at((*x, 0));
                @let anchor = if *x <= 0 { "start" } else if *x >= x_max { "end" } else { "middle" };
                text x=(px) y=(HEIGHT - BOTTOM + 16) text-anchor=(anchor) { (label) }
            }
            @if let Some((x, y)) = marked {
                circle cx=(x) cy=(y) r="5" fill="#b3261e" {}
                text x=(x) y=(y - 9) text-anchor="middle" { "now" }
            }
        }
    }
}

/// The label cut to what fits in `width` units (about 7 per character at the chart's size).
fn short(label: &str, width: i64) -> String {
    let fits = usize::try_from((width / 7).clamp(3, 14)).unwrap_or(3);
    let mut chars = label.chars();
    let short: String = chars.by_ref().take(fits.saturating_sub(1)).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(11), 20);
        assert_eq!(nice_max(4_900), 5_000);
        assert_eq!(nice_max(5_001), 10_000);
    }

    #[test]
    fn bars_are_scaled_to_the_axis() {
        let data = vec![
            Datum {
                label: "a".into(),
                value: 50,
            },
            Datum {
                label: "b".into(),
                value: 100,
            },
        ];
        let svg = bars("t", &data, &|v| v.to_string()).into_string();
        let plot = HEIGHT - TOP - BOTTOM;
        assert!(svg.contains(&format!("height=\"{plot}\"")), "{svg}");
        assert!(svg.contains(&format!("height=\"{}\"", plot / 2)), "{svg}");
    }
}
