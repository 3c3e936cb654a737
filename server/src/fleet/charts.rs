//! Chart text and sparklines. The charts themselves are drawn in the browser by
//! leptos-chartistry from the series the backend sends (`app::fleet::ChartView`); here each
//! gets its text alternative (average, peak and latest), which the page shows as the caption.
//! The lists' CPU sparklines stay small SVG images drawn with plotters: served from their own
//! URL, lazily loaded and cached, 25 on a page cost the page nothing.
use crate::metering::metrics::Point;
use plotters::prelude::*;
use time::OffsetDateTime;

use app::fleet::ChartUnit;

/// One line of a chart: its legend label and its points (sorted by time).
pub struct Line<'a> {
    pub label: &'a str,
    pub points: &'a [Point],
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub unit: ChartUnit,
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

/// The sparkline's blue, the first of the charts' colours.
const LINE: RGBColor = RGBColor(0, 90, 181);

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
                LINE.stroke_width(2),
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
    fn summaries_and_sparklines_with_gaps() {
        let pts = [p(0, 10.0), p(300, 20.0), p(3600, 30.0)];
        assert_eq!(runs(&pts, 300).len(), 2);
        let chart = Chart {
            title: "CPU",
            unit: ChartUnit::Percent,
            lines: vec![Line {
                label: "CPU",
                points: &pts,
            }],
            from: pts[0].at,
            to: pts[2].at,
            resolution: 300,
        };
        let text = summary(&chart);
        assert!(
            text.starts_with("CPU: average 20 %, peak 31 % at "),
            "{text}"
        );
        assert!(text.ends_with("latest 30 %."), "{text}");
        let empty = summary(&Chart {
            lines: vec![Line {
                label: "CPU",
                points: &[],
            }],
            ..chart
        });
        assert_eq!(empty, "CPU: no data in this range.");
        let spark = sparkline(&pts, pts[0].at, pts[2].at, "web-1 <CPU>");
        assert!(spark.starts_with("<svg") && spark.contains("role=\"img\""));
        assert!(spark.contains("web-1 &lt;CPU&gt;: latest 30 %"), "{spark}");
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(
            ChartUnit::Bytes.format(3.0 * 1024.0 * 1024.0 * 1024.0),
            "3 GiB"
        );
        assert_eq!(ChartUnit::BytesPerSecond.format(1500.0), "1.5 kB/s");
        assert_eq!(ChartUnit::Percent.format(42.4), "42 %");
    }
}
