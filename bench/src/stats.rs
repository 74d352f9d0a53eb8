//! Samples and their summary (median, min, max), and the results file.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the two middle values for an even count), min and max.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// One row of the results: a scenario, a tool, a fleet size, its samples.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub scenario: &'static str,
    pub tool: &'static str,
    pub hosts: usize,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    pub summary: Option<Summary>,
    /// How it was measured, or why it could not be.
    pub note: String,
    /// Set when the measurement failed: the samples are missing or partial.
    pub error: Option<String>,
}

impl Measurement {
    pub fn new(
        scenario: &'static str,
        tool: &'static str,
        hosts: usize,
        unit: &'static str,
        samples: Vec<f64>,
        note: impl Into<String>,
    ) -> Self {
        let summary = summarize(&samples);
        Measurement {
            scenario,
            tool,
            hosts,
            unit,
            samples,
            summary,
            note: note.into(),
            error: None,
        }
    }

    pub fn failed(
        scenario: &'static str,
        tool: &'static str,
        hosts: usize,
        unit: &'static str,
        samples: Vec<f64>,
        error: impl Into<String>,
    ) -> Self {
        let mut m = Measurement::new(scenario, tool, hosts, unit, samples, "");
        m.error = Some(error.into());
        m
    }
}

/// Render the rows as a Markdown table.
pub fn markdown(rows: &[Measurement]) -> String {
    let mut s = String::from(
        "| scenario | tool | hosts | median | min | max | runs | unit | note |\n\
         |---|---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let (med, min, max, n) = match r.summary {
            Some(x) => (fmt(x.median), fmt(x.min), fmt(x.max), x.n.to_string()),
            None => ("—".into(), "—".into(), "—".into(), "0".into()),
        };
        let note = match &r.error {
            Some(e) => format!("NOT MEASURED: {e}"),
            None => r.note.clone(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {med} | {min} | {max} | {n} | {} | {} |\n",
            r.scenario,
            r.tool,
            r.hosts,
            r.unit,
            note.replace('|', "\\|").replace('\n', " ")
        ));
    }
    s
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
