//! Stacked bar charts as inline SVG: the days of a window grouped into
//! bars (per day, or per week or month for a long window), one coloured
//! and patterned segment per series, with axes, their titles, a legend and
//! a tooltip per segment. Colours differ in lightness and every other
//! series is striped or dotted, so a grayscale print still tells them
//! apart. Pure: no I/O, no clock.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use time::{Date, Duration, Month};

use crate::report::grouped;
use crate::report::html::Esc;
use crate::state::report::PerDay;

/// How days are grouped into bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    Day,
    Week,
    Month,
}

impl Grain {
    /// The x axis's title.
    pub fn axis(self) -> &'static str {
        match self {
            Grain::Day => "day (UTC)",
            Grain::Week => "week starting Monday (UTC)",
            Grain::Month => "month (UTC)",
        }
    }

    /// "per day", "per week", "per month".
    pub fn per(self) -> &'static str {
        match self {
            Grain::Day => "per day",
            Grain::Week => "per week",
            Grain::Month => "per month",
        }
    }
}

/// Bars: a label and, per series, a count each; the series with their
/// colour (an index into the palette), bottom first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bars {
    pub grain: Grain,
    pub labels: Vec<String>,
    pub counts: Vec<BTreeMap<String, u64>>,
    pub series: Vec<(String, usize)>,
}

/// At most this many bars; a longer window is grouped by week or month.
const MAX_BARS: i64 = 92;
/// At most this many series; the smallest others are summed as [`OTHER`].
const MAX_SERIES: usize = 10;
pub const OTHER: &str = "other";

/// Colours in the order series take them, their lightness spread.
const PALETTE: [&str; 12] = [
    "#0072B2", "#56B4E9", "#009E73", "#E69F00", "#CC79A7", "#D55E00", "#332288", "#999933",
    "#882255", "#555555", "#44AA99", "#DDCC77",
];

fn date(s: &str) -> Option<Date> {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.get(..10)?, f).ok()
}

fn day_text(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

fn span(first: Date, last: Date) -> i64 {
    (last - first).whole_days() + 1
}

/// Groups `per_day` into bars from the day of `from` to the day of `to`;
/// `None` when there is nothing to draw. A window longer than 92 days is
/// first narrowed to the days that have records. Series named in
/// `preferred` keep their place (and colour); the others follow by size.
pub fn bars(per_day: &PerDay, from: &str, to: &str, preferred: &[&str]) -> Option<Bars> {
    let (mut first, mut last) = (date(from)?, date(to)?);
    if span(first, last) > MAX_BARS {
        first = first.max(date(per_day.keys().next()?)?);
        last = last.min(date(per_day.keys().next_back()?)?);
    }
    if last < first || per_day.is_empty() {
        return None;
    }
    let grain = match span(first, last) {
        n if n <= MAX_BARS => Grain::Day,
        n if n / 7 < MAX_BARS => Grain::Week,
        _ => Grain::Month,
    };
    let (labels, counts) = group(per_day, first, last, grain);
    let series = series(&counts, preferred);
    let counts = fold_other(counts, &series);
    if counts.iter().all(BTreeMap::is_empty) {
        return None;
    }
    Some(Bars {
        grain,
        labels,
        counts,
        series,
    })
}

fn start_of(d: Date, grain: Grain) -> Date {
    match grain {
        Grain::Day => d,
        Grain::Week => d - Duration::days(i64::from(d.weekday().number_days_from_monday())),
        Grain::Month => d.replace_day(1).unwrap_or(d),
    }
}

fn next(d: Date, grain: Grain) -> Option<Date> {
    match grain {
        Grain::Day => d.next_day(),
        Grain::Week => d.checked_add(Duration::days(7)),
        Grain::Month if d.month() == Month::December => {
            Date::from_calendar_date(d.year() + 1, Month::January, 1).ok()
        }
        Grain::Month => Date::from_calendar_date(d.year(), d.month().next(), 1).ok(),
    }
}

type Grouped = (Vec<String>, Vec<BTreeMap<String, u64>>);

/// The bars from `first` to `last`, empty ones included.
fn group(per_day: &PerDay, first: Date, last: Date, grain: Grain) -> Grouped {
    let mut by_start: BTreeMap<Date, BTreeMap<String, u64>> = BTreeMap::new();
    for (day, counts) in per_day.range(day_text(first)..=day_text(last)) {
        let Some(d) = date(day) else { continue };
        let bar = by_start.entry(start_of(d, grain)).or_default();
        for (k, n) in counts {
            *bar.entry(k.clone()).or_default() += n;
        }
    }
    let (mut labels, mut counts) = (Vec::new(), Vec::new());
    let mut at = Some(start_of(first, grain));
    while let Some(d) = at.filter(|d| *d <= last) {
        let text = day_text(d);
        labels.push(match grain {
            Grain::Month => text[..7].to_string(),
            _ => text,
        });
        counts.push(by_start.remove(&d).unwrap_or_default());
        at = next(d, grain);
    }
    (labels, counts)
}

/// The series to draw, bottom first, with their colours.
fn series(counts: &[BTreeMap<String, u64>], preferred: &[&str]) -> Vec<(String, usize)> {
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for bar in counts {
        for (k, n) in bar {
            *totals.entry(k).or_default() += n;
        }
    }
    let mut out: Vec<(String, usize)> = preferred
        .iter()
        .enumerate()
        .filter(|(_, p)| totals.contains_key(**p))
        .map(|(i, p)| (p.to_string(), i))
        .collect();
    let mut rest: Vec<(&str, u64)> = totals
        .into_iter()
        .filter(|(k, _)| !preferred.contains(k))
        .collect();
    rest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let colour = preferred.len();
    let rest = rest
        .into_iter()
        .enumerate()
        .map(|(i, (k, _))| (k.to_string(), colour + i));
    out.extend(rest);
    if out.len() > MAX_SERIES {
        out.truncate(MAX_SERIES - 1);
        out.push((OTHER.to_string(), MAX_SERIES - 1));
    }
    out
}

/// Sums the counts of series not drawn into [`OTHER`].
fn fold_other(
    counts: Vec<BTreeMap<String, u64>>,
    series: &[(String, usize)],
) -> Vec<BTreeMap<String, u64>> {
    counts
        .into_iter()
        .map(|bar| {
            let mut out = BTreeMap::new();
            for (k, n) in bar {
                let key = if series.iter().any(|(s, _)| *s == k) {
                    k
                } else {
                    OTHER.to_string()
                };
                *out.entry(key).or_default() += n;
            }
            out
        })
        .collect()
}

/// The chart's geometry (SVG user units).
const WIDTH: f64 = 960.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 20.0;
const PLOT: f64 = 220.0;
const LEGEND_ROW: f64 = 20.0;

/// A round step for the y axis so that about four lines cover `max`.
fn step_for(max: u64) -> u64 {
    let mut unit = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = unit.saturating_mul(m);
            if step.saturating_mul(4) >= max {
                return step;
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// The legend's rows: per series its x and row.
fn legend_layout(series: &[(String, usize)]) -> Vec<(f64, usize)> {
    let (mut x, mut row) = (LEFT, 0);
    series
        .iter()
        .map(|(name, _)| {
            let w = 28.0 + 7.0 * name.chars().count() as f64;
            if x + w > WIDTH - RIGHT && x > LEFT {
                x = LEFT;
                row += 1;
            }
            let at = (x, row);
            x += w + 12.0;
            at
        })
        .collect()
}

/// Writes `bars` as one `<svg>` (ids prefixed by `id`), the y axis titled
/// `y_title`.
pub fn svg(out: &mut dyn Write, id: &str, bars: &Bars, y_title: &str) -> fmt::Result {
    let legend = legend_layout(&bars.series);
    let rows = legend.iter().map(|(_, r)| r + 1).max().unwrap_or(1);
    let height = TOP + PLOT + 64.0 + (rows - 1) as f64 * LEGEND_ROW;
    write!(
        out,
        "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 {WIDTH} {height}\" \
         aria-labelledby=\"{id}-title\">\
         <title id=\"{id}-title\">{} {}</title><defs>",
        Esc(y_title),
        Esc(bars.grain.per())
    )?;
    for (_, colour) in &bars.series {
        pattern(out, id, *colour)?;
    }
    out.write_str("</defs>")?;
    let max = bars
        .counts
        .iter()
        .map(|b| b.values().sum())
        .max()
        .unwrap_or(0);
    let step = step_for(max);
    let top = max.div_ceil(step).max(1) * step;
    axes(out, bars, y_title, step, top)?;
    columns(out, id, bars, top)?;
    legend_items(out, id, bars, &legend)?;
    out.write_str("</svg>")
}

/// A fill per colour: solid, striped or dotted, in turn.
fn pattern(out: &mut dyn Write, id: &str, colour: usize) -> fmt::Result {
    let c = PALETTE[colour % PALETTE.len()];
    match colour % 3 {
        1 => write!(
            out,
            "<pattern id=\"{id}-f{colour}\" width=\"6\" height=\"6\" \
             patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
             <rect width=\"6\" height=\"6\" fill=\"{c}\"/>\
             <rect width=\"2\" height=\"6\" fill=\"#fff\" fill-opacity=\"0.6\"/></pattern>"
        ),
        2 => write!(
            out,
            "<pattern id=\"{id}-f{colour}\" width=\"5\" height=\"5\" \
             patternUnits=\"userSpaceOnUse\"><rect width=\"5\" height=\"5\" fill=\"{c}\"/>\
             <circle cx=\"2.5\" cy=\"2.5\" r=\"1.2\" fill=\"#fff\" fill-opacity=\"0.75\"/>\
             </pattern>"
        ),
        _ => Ok(()),
    }
}

fn fill(id: &str, colour: usize) -> String {
    match colour % 3 {
        0 => PALETTE[colour % PALETTE.len()].to_string(),
        _ => format!("url(#{id}-f{colour})"),
    }
}

/// Grid lines, the y labels, the x labels, and both axis titles.
fn axes(out: &mut dyn Write, bars: &Bars, y_title: &str, step: u64, top: u64) -> fmt::Result {
    let bottom = TOP + PLOT;
    let mut v = 0;
    while v <= top {
        let y = bottom - PLOT * v as f64 / top as f64;
        write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            grouped(v)
        )?;
        v += step;
    }
    let n = bars.labels.len();
    let slot = (WIDTH - LEFT - RIGHT) / n as f64;
    // Every so many bars, counted back from the last, which is labelled.
    let every = n.div_ceil(12).max(1);
    for (i, label) in bars.labels.iter().enumerate() {
        if !(n - 1 - i).is_multiple_of(every) {
            continue;
        }
        let x = LEFT + slot * (i as f64 + 0.5);
        write!(
            out,
            "<text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            bottom + 16.0,
            Esc(label)
        )?;
    }
    write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{bottom}\" y2=\"{bottom}\"/>\
         <text class=\"axis-title\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
         <text class=\"axis-title\" transform=\"translate(16 {:.1}) rotate(-90)\" \
         text-anchor=\"middle\">{}</text>",
        WIDTH - RIGHT,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        bottom + 36.0,
        Esc(bars.grain.axis()),
        TOP + PLOT / 2.0,
        Esc(y_title)
    )
}

/// One stacked column per bar, a tooltip per segment, the total above
/// each column when there is room.
fn columns(out: &mut dyn Write, id: &str, bars: &Bars, top: u64) -> fmt::Result {
    let n = bars.labels.len();
    let slot = (WIDTH - LEFT - RIGHT) / n as f64;
    let width = (slot * 0.72).max(1.0);
    for (i, (label, counts)) in bars.labels.iter().zip(&bars.counts).enumerate() {
        let x = LEFT + slot * i as f64 + (slot - width) / 2.0;
        let mut y = TOP + PLOT;
        for (name, colour) in &bars.series {
            let Some(&count) = counts.get(name).filter(|c| **c > 0) else {
                continue;
            };
            let h = PLOT * count as f64 / top as f64;
            y -= h;
            write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{h:.1}\" \
                 fill=\"{}\" class=\"seg\"><title>{}: {} {count}</title></rect>",
                fill(id, *colour),
                Esc(label),
                Esc(name)
            )?;
        }
        let total: u64 = counts.values().sum();
        if total > 0 && n <= 31 {
            write!(
                out,
                "<text class=\"total\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + width / 2.0,
                y - 4.0,
                grouped(total)
            )?;
        }
    }
    Ok(())
}

fn legend_items(
    out: &mut dyn Write,
    id: &str,
    bars: &Bars,
    layout: &[(f64, usize)],
) -> fmt::Result {
    let first = TOP + PLOT + 52.0;
    for ((name, colour), (x, row)) in bars.series.iter().zip(layout) {
        let y = first + *row as f64 * LEGEND_ROW;
        write!(
            out,
            "<rect class=\"swatch\" x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"14\" \
             fill=\"{}\"/><text class=\"legend\" x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            y - 11.0,
            fill(id, *colour),
            x + 20.0,
            Esc(name)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_day(days: &[(&str, &str, u64)]) -> PerDay {
        let mut out = PerDay::new();
        for (day, key, n) in days {
            *out.entry(day.to_string())
                .or_default()
                .entry(key.to_string())
                .or_default() += n;
        }
        out
    }

    #[test]
    fn a_short_window_has_a_bar_per_day_empty_days_included() {
        let d = per_day(&[("2026-03-02", "add", 5), ("2026-03-04", "delete", 2)]);
        let b = bars(
            &d,
            "2026-03-01T00:00:00Z",
            "2026-03-05T23:59:59Z",
            &["add", "delete"],
        )
        .unwrap();
        assert_eq!(b.grain, Grain::Day);
        assert_eq!(
            b.labels,
            [
                "2026-03-01",
                "2026-03-02",
                "2026-03-03",
                "2026-03-04",
                "2026-03-05"
            ]
        );
        assert_eq!(b.counts[1]["add"], 5);
        assert!(b.counts[2].is_empty());
        assert_eq!(
            b.series,
            [("add".to_string(), 0), ("delete".to_string(), 1)]
        );
    }

    #[test]
    fn a_long_window_is_narrowed_to_its_records_then_grouped_by_week_or_month() {
        let d = per_day(&[("2026-01-05", "add", 1), ("2026-06-30", "add", 2)]);
        let b = bars(&d, "2000-01-01", "2999-01-01", &[]).unwrap();
        assert_eq!(b.grain, Grain::Week);
        assert_eq!(b.labels.first().unwrap(), "2026-01-05");
        assert_eq!(b.labels.last().unwrap(), "2026-06-29");
        assert_eq!(
            b.counts
                .iter()
                .map(|c| c.values().sum::<u64>())
                .sum::<u64>(),
            3
        );
        let d = per_day(&[("2024-12-31", "x", 1), ("2026-12-01", "x", 1)]);
        let b = bars(&d, "2024-01-01", "2026-12-31", &[]).unwrap();
        assert_eq!(b.grain, Grain::Month);
        assert_eq!(b.labels.first().unwrap(), "2024-12");
        assert_eq!(b.labels.len(), 25);
        assert!(bars(&PerDay::new(), "2026-01-01", "2026-01-02", &[]).is_none());
    }

    #[test]
    fn beyond_ten_series_the_smallest_are_other() {
        let names: Vec<String> = (0..14).map(|i| format!("DSA-{i:02}")).collect();
        let rows: Vec<(&str, &str, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| ("2026-03-01", n.as_str(), 100 - i as u64))
            .collect();
        let b = bars(&per_day(&rows), "2026-03-01", "2026-03-01", &[]).unwrap();
        assert_eq!(b.series.len(), 10);
        assert_eq!(b.series[9].0, OTHER);
        assert_eq!(b.counts[0][OTHER], (87..=91).sum::<u64>());
        let mut svg_text = String::new();
        svg(&mut svg_text, "t", &b, "records").unwrap();
        assert!(svg_text.starts_with("<svg") && svg_text.ends_with("</svg>"));
        assert_eq!(svg_text.matches("class=\"swatch\"").count(), 10);
    }

    #[test]
    fn the_y_axis_steps_are_round() {
        assert_eq!(step_for(0), 1);
        assert_eq!(step_for(3), 1);
        assert_eq!(step_for(7), 2);
        assert_eq!(step_for(19), 5);
        assert_eq!(step_for(1234), 500);
    }
}
