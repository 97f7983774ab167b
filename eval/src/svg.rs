//! Two kinds of plot as plain SVG (no plotting crate: a grouped bar chart and a line chart
//! are a few dozen elements, and the output stays byte-for-byte reproducible).

use std::fmt::Write;

const W: f64 = 960.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// One series of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    /// Hatched bars, dashed lines.
    pub alt: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum and tick step for data up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn head(out: &mut String, title: &str, ylabel: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="white"/><line x1="0" y1="0" x2="0" y2="6" stroke="black" stroke-width="2.5"/></pattern></defs>
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        (LEFT + W - RIGHT) / 2.0,
        esc(title),
        (TOP + H - BOTTOM) / 2.0,
        esc(ylabel)
    );
}

fn y_axis(out: &mut String, top: f64, step: f64, unit: &str) {
    let plot_h = H - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= top + step * 0.01 {
        let y = H - BOTTOM - v / top * plot_h;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}{unit}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            trim(v)
        );
        v += step;
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"##,
        H - BOTTOM,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn legend(out: &mut String, series: &[Series], lines: bool) {
    for (i, s) in series.iter().enumerate() {
        let x = W - RIGHT + 16.0;
        let y = TOP + 8.0 + i as f64 * 20.0;
        if lines {
            let _ = writeln!(
                out,
                r##"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2.5"{}/>"##,
                x + 24.0,
                s.color,
                if s.alt {
                    r#" stroke-dasharray="6,4""#
                } else {
                    ""
                }
            );
        } else {
            let _ = writeln!(
                out,
                r##"<rect x="{x}" y="{}" width="24" height="12" fill="{}" stroke="black" stroke-width="0.5"/>{}"##,
                y - 6.0,
                s.color,
                if s.alt {
                    format!(
                        r##"<rect x="{x}" y="{}" width="24" height="12" fill="url(#hatch)" fill-opacity="0.35"/>"##,
                        y - 6.0
                    )
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}">{}</text>"##,
            x + 30.0,
            y + 4.0,
            esc(&s.label)
        );
    }
}

/// Grouped bars: one group per `(label, values)`, one bar per series (a missing value leaves
/// a gap marked "n/m").
pub fn bars(
    title: &str,
    ylabel: &str,
    unit: &str,
    series: &[Series],
    groups: &[(String, Vec<Option<f64>>)],
) -> String {
    let mut out = String::new();
    head(&mut out, title, ylabel);
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let (top, step) = axis(max);
    y_axis(&mut out, top, step, unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let gw = plot_w / groups.len().max(1) as f64;
    let bw = (gw * 0.8) / series.len().max(1) as f64;
    for (g, (label, values)) in groups.iter().enumerate() {
        let gx = LEFT + g as f64 * gw + gw * 0.1;
        for (i, s) in series.iter().enumerate() {
            let x = gx + i as f64 * bw;
            match values.get(i).copied().flatten() {
                Some(v) => {
                    let v = v.max(0.0);
                    let h = v / top * plot_h;
                    let y = H - BOTTOM - h;
                    let _ = writeln!(
                        out,
                        r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}" stroke="black" stroke-width="0.5"><title>{}: {}</title></rect>"##,
                        bw * 0.92,
                        s.color,
                        esc(&s.label),
                        trim(v)
                    );
                    if s.alt {
                        let _ = writeln!(
                            out,
                            r##"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="url(#hatch)" fill-opacity="0.35"/>"##,
                            bw * 0.92
                        );
                    }
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{:.1}" y="{}" font-size="8" text-anchor="middle" fill="#888">n/m</text>"##,
                        x + bw * 0.46,
                        H - BOTTOM - 3.0
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            gx + gw * 0.4,
            H - BOTTOM + 18.0,
            esc(label)
        );
    }
    legend(&mut out, series, false);
    out.push_str("</svg>\n");
    out
}

/// Lines through `(x, y)` points, one per series.
pub fn lines(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    unit: &str,
    series: &[(Series, Vec<(f64, f64)>)],
) -> String {
    let mut out = String::new();
    head(&mut out, title, ylabel);
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::max);
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let (top, step) = axis(ymax);
    y_axis(&mut out, top, step, unit);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - 1.0) / (xmax - 1.0).max(1.0) * plot_w;
    let py = |y: f64| H - BOTTOM - y / top * plot_h;
    for x in 1..=xmax as usize {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"##,
            px(x as f64),
            H - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">{}</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 14.0,
        esc(xlabel)
    );
    for (s, pts) in series {
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{}/>"##,
            path.join(" "),
            s.color,
            if s.alt {
                r#" stroke-dasharray="6,4""#
            } else {
                ""
            }
        );
        for (x, y) in pts {
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{} #{x}: {}</title></circle>"##,
                px(*x),
                py(*y),
                s.color,
                esc(&s.label),
                trim(*y)
            );
        }
    }
    legend(
        &mut out,
        &series.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(),
        true,
    );
    out.push_str("</svg>\n");
    out
}
