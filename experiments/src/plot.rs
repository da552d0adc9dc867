//! The experiments' plots (SVG): grouped bars with 95% intervals, and lines.
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// A share (0-1) with its 95% interval.
pub type Share = (f64, (f64, f64));

/// Bars of shares (0-1) per group and series, each with its interval as a whisker; the legend
/// sits above the plot area, off the data.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    ydesc: &str,
    groups: &[String],
    series: &[(String, Vec<Share>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (860, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .margin_top(40)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n, 0.0..100.0)?;
    let labels = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(ydesc)
        .draw()?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, (name, vals)) in series.iter().enumerate() {
        let c = COLORS[j % COLORS.len()];
        let x0 = |i: usize| i as f64 + 0.1 + j as f64 * width;
        chart
            .draw_series(vals.iter().enumerate().map(|(i, (v, _))| {
                Rectangle::new([(x0(i) + 0.01, 0.0), (x0(i) + width - 0.01, 100.0 * v)], c.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart.draw_series(vals.iter().enumerate().map(|(i, (_, (lo, hi)))| {
            let xm = x0(i) + width / 2.0;
            PathElement::new(vec![(xm, 100.0 * lo), (xm, 100.0 * hi)], BLACK.stroke_width(1))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Lines of `y` against numeric `x`, one per series, with the y range given.
pub fn lines(
    path: &Path,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    y_range: (f64, f64),
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (820, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (xmin, xmax) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
        (xmin, xmax)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .right_y_label_area_size(150)
        .build_cartesian_2d(xmin..xmax, y_range.0..y_range.1)?;
    chart.configure_mesh().x_desc(xdesc).y_desc(ydesc).draw()?;
    for (j, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[(j + 1) % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::Coordinate(700, 20))
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
