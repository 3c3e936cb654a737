//! Charts as SVG drawn on the server with plotters: they arrive with the page (no chart code in
//! the WASM bundle), print, and work without JavaScript. Each carries a title and a text
//! alternative (the same summary the page shows under it).
use crate::metrics::Point;
use plotters::prelude::*;
use std::sync::OnceLock;
use time::OffsetDateTime;

static FONT: OnceLock<bool> = OnceLock::new();

/// plotters measures text with a real font; the browser draws it with its own sans-serif.
fn ensure_font() -> bool {
    *FONT.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        )
        .is_ok()
    })
}

/// What a series measures, for axis labels and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Percent,
    Bytes,
    BytesPerSecond,
    Count,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        fn scaled(v: f64, units: &[&str], step: f64) -> String {
            let mut v = v;
            let mut i = 0;
            while v.abs() >= step && i + 1 < units.len() {
                v /= step;
                i += 1;
            }
            if v.abs() >= 100.0 || v == v.trunc() {
                format!("{v:.0} {}", units[i])
            } else {
                format!("{v:.1} {}", units[i])
            }
        }
        match self {
            Unit::Percent => format!("{v:.0} %"),
            Unit::Bytes => scaled(v, &["B", "KiB", "MiB", "GiB", "TiB"], 1024.0),
            Unit::BytesPerSecond => scaled(v, &["B/s", "kB/s", "MB/s", "GB/s"], 1000.0),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// One line of a chart: its legend label and its points (sorted by time).
pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [Point],
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub unit: Unit,
    pub lines: Vec<Line<'a>>,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    /// Bucket size in seconds: points further apart than two buckets are a gap in the line.
    pub resolution: i64,
}

/// The chart's text alternative: average, peak and latest of each line over the range.
pub fn summary(chart: &Chart) -> String {
    let mut parts = Vec::new();
    let named = chart.lines.len() > 1;
    for line in &chart.lines {
        let name = if named {
            format!("{}: ", line.label)
        } else {
            String::new()
        };
        let Some(last) = line.points.last() else {
            parts.push(format!("{name}no data in this range"));
            continue;
        };
        let avg = line.points.iter().map(|p| p.avg).sum::<f64>() / line.points.len() as f64;
        let peak = line
            .points
            .iter()
            .max_by(|a, b| a.max.total_cmp(&b.max))
            .unwrap_or(last);
        parts.push(format!(
            "{name}average {}, peak {} at {}, latest {}",
            chart.unit.format(avg),
            chart.unit.format(peak.max),
            stamp(peak.at),
            chart.unit.format(last.avg)
        ));
    }
    format!("{}: {}.", chart.title, parts.join("; "))
}

fn stamp(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&f).unwrap_or_default()
}

type Utc = chrono::DateTime<chrono::Utc>;

fn utc(t: OffsetDateTime) -> Utc {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default()
}

/// Tick labels: clock times within two days, dates within two months, months beyond.
fn axis_label(t: &Utc, span: chrono::Duration) -> String {
    let f = if span <= chrono::Duration::days(2) {
        "%H:%M"
    } else if span <= chrono::Duration::days(62) {
        "%b %-d"
    } else {
        "%b %Y"
    };
    t.format(f).to_string()
}

/// Splits points into runs without gaps longer than two buckets.
fn runs(points: &[Point], resolution: i64) -> Vec<&[Point]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..points.len() {
        if (points[i].at - points[i - 1].at).whole_seconds() > 2 * resolution {
            out.push(&points[start..i]);
            start = i;
        }
    }
    if start < points.len() {
        out.push(&points[start..]);
    }
    out
}

/// High-contrast colours that stay apart on a projector and for common colour blindness.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0, 90, 181),
    RGBColor(220, 50, 32),
    RGBColor(0, 133, 80),
    RGBColor(120, 60, 160),
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Makes plotters' fixed-size SVG scale with its container and labels it for screen readers.
fn accessible(svg: String, title: &str, alt: &str) -> String {
    let Some(end) = svg.find('>') else {
        return svg;
    };
    let (open, rest) = svg.split_at(end);
    let open = open.replacen(" width=\"", " data-width=\"", 1).replacen(
        " height=\"",
        " data-height=\"",
        1,
    );
    format!(
        "{open} class=\"chart-svg\" role=\"img\" aria-label=\"{alt}\" preserveAspectRatio=\"xMidYMid meet\"><title>{title}</title>{rest}",
        alt = escape(alt),
        title = escape(title),
        rest = &rest[1..]
    )
}

/// A line chart: per line, the average as a line and the min–max range as a light band.
/// Drawn at about the size it is shown, with large type, so it reads on a projector.
pub fn line_chart(chart: &Chart) -> String {
    ensure_font();
    let (w, h) = (640u32, 300u32);
    let (x0, x1) = (
        utc(chart.from),
        utc(chart.to).max(utc(chart.from) + chrono::Duration::seconds(1)),
    );
    let peak = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.max))
        .fold(0.0f64, f64::max);
    let y1 = match chart.unit {
        Unit::Percent => 100.0,
        _ if peak > 0.0 => peak * 1.15,
        Unit::Bytes => 1024.0 * 1024.0 * 1024.0,
        Unit::BytesPerSecond => 1_000_000.0,
        Unit::Count => 5.0,
    };
    // Whole numbers on a count axis: at least 0–5, rounded up.
    let y1 = if chart.unit == Unit::Count {
        y1.max(5.0).ceil()
    } else {
        y1
    };
    let empty = chart.lines.iter().all(|l| l.points.is_empty());
    let mut buf = String::new();
    let drawn: Result<(), Box<dyn std::error::Error>> = (|| {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .margin(14)
            .x_label_area_size(36)
            .y_label_area_size(92)
            .build_cartesian_2d(x0..x1, 0f64..y1)?;
        let unit = chart.unit;
        let span = x1 - x0;
        c.configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|t| axis_label(t, span))
            .y_label_formatter(&|y| unit.format(*y))
            .label_style(("sans-serif", 18))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(214, 214, 214))
            .axis_style(RGBColor(90, 90, 90))
            .draw()?;
        for (i, line) in chart.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            for run in runs(line.points, chart.resolution) {
                let band: Vec<(Utc, f64)> = run
                    .iter()
                    .map(|p| (utc(p.at), p.max))
                    .chain(run.iter().rev().map(|p| (utc(p.at), p.min)))
                    .collect();
                c.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.15))))?;
            }
            // A lone bucket (a gap on both sides) has no line to draw: mark it.
            for run in runs(line.points, chart.resolution)
                .into_iter()
                .filter(|r| r.len() == 1)
            {
                c.draw_series(std::iter::once(Circle::new(
                    (utc(run[0].at), run[0].avg),
                    4,
                    colour.filled(),
                )))?;
            }
            let mut first = true;
            for run in runs(line.points, chart.resolution) {
                let series = c.draw_series(LineSeries::new(
                    run.iter().map(|p| (utc(p.at), p.avg)),
                    colour.stroke_width(3),
                ))?;
                if first {
                    series.label(line.label).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3))
                    });
                    first = false;
                }
            }
        }
        if chart.lines.len() > 1 && !empty {
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 18))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .draw()?;
        }
        if empty {
            root.draw(&Text::new(
                "No samples in this range yet",
                ((w / 2 - 110) as i32, (h / 2 - 20) as i32),
                ("sans-serif", 20).into_font().color(&RGBColor(90, 90, 90)),
            ))?;
        }
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        tracing::warn!(error = %e, title = chart.title, "chart drawing failed");
    }
    accessible(buf, chart.title, &summary(chart))
}

/// A small trend line without axes, for lists (CPU of each VM over the last hours).
pub fn sparkline(
    points: &[Point],
    from: OffsetDateTime,
    to: OffsetDateTime,
    label: &str,
) -> String {
    let (w, h) = (120u32, 28u32);
    let x0 = from.unix_timestamp();
    let x1 = to.unix_timestamp().max(x0 + 1);
    let mut buf = String::new();
    let drawn: Result<(), Box<dyn std::error::Error>> = (|| {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        let mut c = ChartBuilder::on(&root)
            .margin(2)
            .build_cartesian_2d(x0..x1, 0f64..100f64)?;
        // A faint baseline, so an empty sparkline still reads as "nothing yet", not as missing.
        c.draw_series(std::iter::once(PathElement::new(
            vec![(x0, 0.0), (x1, 0.0)],
            RGBColor(200, 205, 215).stroke_width(1),
        )))?;
        for run in runs(points, 300) {
            c.draw_series(LineSeries::new(
                run.iter().map(|p| (p.at.unix_timestamp(), p.avg)),
                COLOURS[0].stroke_width(2),
            ))?;
        }
        root.present()?;
        Ok(())
    })();
    if let Err(e) = drawn {
        tracing::warn!(error = %e, "sparkline drawing failed");
    }
    let alt = match points.last() {
        Some(last) => {
            let peak = points.iter().map(|p| p.max).fold(0.0, f64::max);
            format!("{label}: latest {:.0} %, peak {:.0} %", last.avg, peak)
        }
        None => format!("{label}: no samples yet"),
    };
    accessible(buf, label, &alt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: i64, v: f64) -> Point {
        Point {
            at: OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap(),
            min: v - 1.0,
            avg: v,
            max: v + 1.0,
        }
    }

    #[test]
    fn draws_an_accessible_svg_with_gaps_and_a_summary() {
        let pts = [p(0, 10.0), p(300, 20.0), p(3600, 30.0)];
        assert_eq!(runs(&pts, 300).len(), 2);
        let chart = Chart {
            title: "CPU <busy>",
            unit: Unit::Percent,
            lines: vec![Line {
                label: "CPU",
                points: &pts,
            }],
            from: pts[0].at,
            to: pts[2].at,
            resolution: 300,
        };
        let svg = line_chart(&chart);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("<title>CPU &lt;busy&gt;</title>"));
        assert!(
            svg.contains("CPU &lt;busy&gt;: average 20 %, peak 31 %"),
            "{svg}"
        );
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(svg.contains("viewBox"));
        let empty = line_chart(&Chart {
            lines: vec![Line {
                label: "CPU",
                points: &[],
            }],
            ..chart
        });
        assert!(empty.contains("No samples in this range yet"));
        assert!(sparkline(&pts, pts[0].at, pts[2].at, "web-1 CPU").contains("latest 30 %"));
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(Unit::Bytes.format(3.0 * 1024.0 * 1024.0 * 1024.0), "3 GiB");
        assert_eq!(Unit::BytesPerSecond.format(1500.0), "1.5 kB/s");
        assert_eq!(Unit::Percent.format(42.4), "42 %");
    }
}
