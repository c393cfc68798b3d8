//! `--report DIR`: the files a run leaves behind besides the JSON.
//!
//! - `latency.hgrm`: the percentile distribution in HdrHistogram's text format (values in
//!   µs), which HdrHistogram's plotter and other tools read.
//! - `latency.png`: the same distribution drawn on the usual 1/(1-p) axis.
//! - `timeline.png`: messages/s and p99 per second.
//! - `report.json`: the same JSON as `--json`.
//!
//! Text in the PNGs needs a TrueType font; the first of a few usual paths that exists is
//! used (no fontconfig). Without one the PNGs are skipped with a note, the rest is written.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::Report;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// Writes every report file into `dir`; returns notes about anything skipped.
pub fn write_all(
    dir: &Path,
    report: &Report,
    latency: &Histogram<u64>,
) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut notes = Vec::new();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    write("latency.hgrm", hgrm(latency).as_bytes())?;
    let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
    write("report.json", &json)?;
    if !register_font() {
        notes.push("no TrueType font found (e.g. fonts-dejavu-core): PNG plots skipped".into());
        return Ok(notes);
    }
    if latency.is_empty() {
        notes.push("no latency samples: latency.png skipped".into());
    } else if let Err(e) = percentile_png(&dir.join("latency.png"), latency, report) {
        notes.push(format!("latency.png: {e}"));
    }
    if report.timeline.len() >= 2 {
        if let Err(e) = timeline_png(&dir.join("timeline.png"), report) {
            notes.push(format!("timeline.png: {e}"));
        }
    }
    Ok(notes)
}

/// HdrHistogram's percentile distribution text, values in µs (histogram in ns).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>2.12} {:>10} {}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

fn register_font() -> bool {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                // The font must live as long as the process: plotters keeps a reference.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn percentile_png(path: &Path, h: &Histogram<u64>, report: &Report) -> DrawResult {
    // x: 1/(1-p) on a log axis, so the tail gets the room it deserves.
    let points: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(10.0, f64::max);
    let y_max = h.max() as f64 / 1000.0 * 1.05;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} latency distribution ({} samples)",
        scenario_name(report),
        h.len()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("{:.4}%", (1.0 - 1.0 / x) * 100.0))
        .draw()?;
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

fn timeline_png(path: &Path, report: &Report) -> DrawResult {
    let t: Vec<&crate::progress::Sample> = report.timeline.iter().collect();
    let t_max = t.last().map_or(1.0, |s| s.t_s).max(1.0);
    let rate_max = t
        .iter()
        .map(|s| s.received_per_sec.max(s.handshakes_per_sec))
        .fold(1.0, f64::max);
    let p99_max = t.iter().map(|s| s.p99_us).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let mut a = ChartBuilder::on(&top)
        .caption(
            format!("{}: per second", scenario_name(report)),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max * 1.1)?;
    a.configure_mesh()
        .y_desc("per second")
        .y_label_formatter(&|v| crate::progress::human(*v))
        .draw()?;
    a.draw_series(LineSeries::new(
        t.iter().map(|s| (s.t_s, s.received_per_sec)),
        BLUE.stroke_width(2),
    ))?
    .label("messages received")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    a.draw_series(LineSeries::new(
        t.iter().map(|s| (s.t_s, s.handshakes_per_sec)),
        GREEN.stroke_width(2),
    ))?
    .label("handshakes")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    a.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let mut b = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..p99_max * 1.1)?;
    b.configure_mesh()
        .x_desc("seconds")
        .y_desc("p99 latency (µs)")
        .draw()?;
    b.draw_series(LineSeries::new(
        t.iter().map(|s| (s.t_s, s.p99_us)),
        RED.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

fn scenario_name(r: &Report) -> String {
    serde_json::to_value(r.scenario)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_ends_at_the_total_count() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=1000u64 {
            crate::stats::record(&mut h, v * 1000, 1);
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value"));
        assert!(text.contains("Total count    =         1000"));
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last_row.contains(" 1000"), "{last_row}");
    }
}
