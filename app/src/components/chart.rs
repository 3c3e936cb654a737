//! Charts drawn in the browser with leptos-chartistry (time axis, tooltips on hover) from the
//! series the server sends, and the range picker that chooses their span. The server also
//! sends each chart's text alternative, shown as its caption, so the figures read without
//! JavaScript too.
use crate::fleet::{ChartUnit, ChartView, RANGES};
use chrono::{DateTime, TimeZone, Utc};
use leptos::prelude::*;
use leptos_chartistry::{
    AspectRatio, AxisMarker, Chart, IntoInner, Line, Marker, MarkerShape, Series, TickLabels,
    Tooltip, TooltipPlacement, XGridLine, YGridLine,
};

/// The charts in a grid, each a figure with its text alternative as the caption.
#[component]
pub fn ChartGrid(charts: Vec<ChartView>) -> impl IntoView {
    view! {
        <div class="charts">
            {charts.into_iter().map(|c| view! {
                <figure class="card chart" data-chart=c.title.clone()>
                    <h3 class="chart-title">{c.title.clone()}</h3>
                    <div class="chart-frame" role="img" aria-label=c.summary.clone()>
                        <Mounted chart=c.clone()/>
                    </div>
                    <figcaption class="small muted">{c.summary}</figcaption>
                </figure>
            }).collect_view()}
        </div>
    }
}

/// The chart once the page runs in the browser: chartistry measures its frame there, and on
/// the server it only ever draws "Loading..." while its observers outlive the request (the
/// fleet bench's memory and latency grew with every dashboard rendered).
#[component]
fn Mounted(chart: ChartView) -> impl IntoView {
    let mounted = RwSignal::new(false);
    Effect::new(move |_| mounted.set(true));
    move || {
        if mounted.get() {
            view! { <LineChart chart=chart.clone()/> }.into_any()
        } else {
            view! { <p class="chart-wait muted small">"Loading…"</p> }.into_any()
        }
    }
}

/// One instant of a chart: a value per line, NaN where a line has no data (a gap).
#[derive(Clone, Debug, PartialEq)]
struct Row {
    at: DateTime<Utc>,
    values: Vec<f64>,
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The lines' points merged by time, with a NaN row wherever a line skips more than two
/// buckets, so a sampling gap shows as a gap rather than a straight line across it.
fn rows(chart: &ChartView) -> Vec<Row> {
    let n = chart.lines.len();
    let mut times: Vec<i64> = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    times.sort_unstable();
    times.dedup();
    let gap = chart.resolution_s.max(1) * 2 * 1000;
    let mut out = Vec::with_capacity(times.len() + 8);
    let mut prev: Option<i64> = None;
    for t in times {
        if let Some(p) = prev {
            if t - p > gap {
                out.push(Row {
                    at: at(p + gap / 2),
                    values: vec![f64::NAN; n],
                });
            }
        }
        let values = chart
            .lines
            .iter()
            .map(|l| {
                l.points
                    .binary_search_by_key(&t, |p| p.0)
                    .ok()
                    .map(|i| l.points[i].1)
                    .unwrap_or(f64::NAN)
            })
            .collect();
        out.push(Row { at: at(t), values });
        prev = Some(t);
    }
    out
}

#[component]
fn LineChart(chart: ChartView) -> impl IntoView {
    let unit = chart.unit;
    let mut series = Series::new(|r: &Row| r.at)
        .with_x_range(at(chart.from_ms), at(chart.to_ms))
        .with_min_y(0.0);
    if unit == ChartUnit::Percent {
        series = series.with_max_y(100.0);
    }
    for (i, line) in chart.lines.iter().enumerate() {
        let mut drawn = Line::new(move |r: &Row| r.values.get(i).copied().unwrap_or(f64::NAN))
            .with_name(line.label.clone())
            .with_width(2.0);
        // A line needs two points: with few samples (a new VM, a fresh fleet) mark each one.
        if line.points.len() < 50 {
            drawn = drawn.with_marker(Marker::from_shape(MarkerShape::Circle).with_scale(1.2));
        }
        series = series.line(drawn);
    }
    // Counts keep the generator's own labels (0.5 steps read as 0.5, not as 0 and 1 twice).
    let y_ticks = TickLabels::aligned_floats().with_format(move |v, ticks| match unit {
        ChartUnit::Count => ticks.format(v),
        _ => unit.format(*v),
    });
    let x_ticks = TickLabels::timestamps();
    let data = Signal::stored(rows(&chart));
    view! {
        <Chart
            aspect_ratio=AspectRatio::from_env_width(220.0)
            series=series
            data=data
            left=y_ticks.clone()
            bottom=x_ticks.clone()
            inner=[
                AxisMarker::left_edge().into_inner(),
                AxisMarker::bottom_edge().into_inner(),
                XGridLine::from_ticks(x_ticks.clone()).into_inner(),
                YGridLine::from_ticks(y_ticks.clone()).into_inner(),
            ]
            tooltip=Tooltip::new(TooltipPlacement::LeftCursor, x_ticks, y_ticks)
        />
    }
}

/// Links (not a form) so the range is in the URL, can be shared, and works without JavaScript.
#[component]
pub fn RangePicker(current: String, base: String) -> impl IntoView {
    let current = if current.is_empty() {
        "24h".to_string()
    } else {
        current
    };
    view! {
        <nav class="range-picker" aria-label="Chart range">
            {RANGES.iter().map(|(value, label)| {
                let selected = *value == current;
                view! {
                    <a
                        href=format!("{base}?range={value}")
                        class=if selected { "range selected" } else { "range" }
                        aria-current=selected.then_some("true")
                    >{*label}</a>
                }
            }).collect_view()}
        </nav>
    }
}
