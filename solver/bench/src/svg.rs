//! Line charts as standalone SVG, for `kilowatt simulate --plot` (power and throughput over time) and
//! `kilowatt bench solver --plot` (solve time against fleet size, log-log). Pure: data in, text out.

use std::fmt::Write;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    /// A CSS colour.
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// One chart: its axes and lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Both axes logarithmic (base 10); points at or below zero are left out.
    pub log: bool,
    /// The y axis starts at zero (linear charts only).
    pub y_from_zero: bool,
    pub lines: Vec<Line>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 330.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round tick values covering `[lo, hi]`: about five on a linear axis, the powers of ten on a log one.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        return (first..=last).map(|e| 10f64.powi(e)).collect();
    }
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let (first, last) = ((lo / step).floor() as i64, (hi / step - 1e-9).ceil() as i64);
    (first..=last.max(first + 1))
        .map(|i| i as f64 * step)
        .collect()
}

fn label(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if magnitude >= 1e4 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn draw_panel(svg: &mut String, panel: &Panel, top: f64) {
    let transform = |v: f64| if panel.log { v.log10() } else { v };
    let usable = |(x, y): &(f64, f64)| {
        x.is_finite() && y.is_finite() && (!panel.log || (*x > 0.0 && *y > 0.0))
    };
    let points: Vec<(f64, f64)> = panel
        .lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(usable)
        .collect();
    let (mut x_lo, mut x_hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
    let (mut y_lo, mut y_hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, y)| {
            (lo.min(*y), hi.max(*y))
        });
    if points.is_empty() {
        (x_lo, x_hi, y_lo, y_hi) = (1.0, 10.0, 1.0, 10.0);
    }
    if panel.y_from_zero && !panel.log {
        y_lo = y_lo.min(0.0);
    }
    let x_ticks = ticks(x_lo, x_hi, panel.log);
    let y_ticks = ticks(y_lo, y_hi, panel.log);
    let (x_lo, x_hi) = (
        transform(*x_ticks.first().unwrap_or(&x_lo)),
        transform(*x_ticks.last().unwrap_or(&x_hi)),
    );
    let (y_lo, y_hi) = (
        transform(*y_ticks.first().unwrap_or(&y_lo)),
        transform(*y_ticks.last().unwrap_or(&y_hi)),
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (transform(x) - x_lo) / (x_hi - x_lo).max(f64::MIN_POSITIVE) * plot_w;
    let sy = |y: f64| {
        top + TOP + plot_h - (transform(y) - y_lo) / (y_hi - y_lo).max(f64::MIN_POSITIVE) * plot_h
    };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="600">{}</text>"#,
        top + 22.0,
        escape(&panel.title)
    );
    for &x in &x_ticks {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#e4e7ec"/><text x="{px:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#475467">{}</text>"##,
            top + TOP,
            top + TOP + plot_h,
            top + TOP + plot_h + 16.0,
            label(x)
        );
    }
    for &y in &y_ticks {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e7ec"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#475467">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            label(y)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{:.1}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#98a2b3"/>"##,
        top + TOP
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#344054">{}</text>"##,
        LEFT + plot_w / 2.0,
        top + PANEL_HEIGHT - 12.0,
        escape(&panel.x_label)
    );
    let _ = writeln!(
        svg,
        r##"<text transform="translate(18 {:.1}) rotate(-90)" font-size="12" text-anchor="middle" fill="#344054">{}</text>"##,
        top + TOP + plot_h / 2.0,
        escape(&panel.y_label)
    );
    for (i, line) in panel.lines.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .filter(|p| usable(p))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"><title>{}</title></polyline>"#,
                line.color,
                path.join(" "),
                escape(&line.name)
            );
        }
        if panel.log {
            for &(x, y) in line.points.iter().filter(|p| usable(p)) {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    sx(x),
                    sy(y),
                    line.color
                );
            }
        }
        let ly = top + TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="12" fill="#344054">{}</text>"##,
            lx + 22.0,
            line.color,
            lx + 28.0,
            ly + 4.0,
            escape(&line.name)
        );
    }
}

/// The panels stacked in one SVG document.
pub fn render(panels: &[Panel]) -> String {
    let height = PANEL_HEIGHT * panels.len().max(1) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
"##
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, PANEL_HEIGHT * i as f64);
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(log: bool, points: Vec<(f64, f64)>) -> Panel {
        Panel {
            title: "t <1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log,
            y_from_zero: true,
            lines: vec![Line {
                name: "a & b".into(),
                color: "#000",
                dashed: false,
                points,
            }],
        }
    }

    #[test]
    fn linear_ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 7200.0, false),
            vec![0.0, 2000.0, 4000.0, 6000.0, 8000.0]
        );
        let fractions = ticks(0.0, 1.0, false);
        assert_eq!(fractions.len(), 6);
        assert!((fractions[3] - 0.6).abs() < 1e-12 && (fractions[5] - 1.0).abs() < 1e-12);
        assert_eq!(label(fractions[3]), "0.6");
        assert_eq!(
            ticks(0.0004, 2.0, true),
            vec![0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]
        );
    }

    #[test]
    fn a_log_chart_places_each_decade_evenly_and_skips_non_positive_points() {
        let svg = render(&[panel(true, vec![(1000.0, 0.001), (1e6, 1.0), (0.0, 5.0)])]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains(">1M<"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("a &amp; b"));
    }

    #[test]
    fn every_panel_of_a_time_series_gets_its_own_band() {
        let svg = render(&[
            panel(false, vec![(0.0, 1.0), (10.0, 2.0)]),
            panel(false, vec![(0.0, 0.5), (10.0, 0.7)]),
        ]);
        assert!(svg.contains(&format!("height=\"{}\"", 2.0 * PANEL_HEIGHT)));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
