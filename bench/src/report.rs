//! What a scenario measured, printed as a table for people or as one JSON
//! line for machines (`herald-bench --json`).

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// How reports are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned table, one figure per line.
    Table,
    /// One JSON object per report, on one line.
    Json,
}

/// One measured figure.
#[derive(Debug, Clone)]
struct Figure {
    key: &'static str,
    value: Value,
    unit: &'static str,
    note: Option<String>,
}

/// The figures of one scenario run, in the order they were added.
///
/// # Examples
///
/// ```
/// use herald_bench::report::Report;
///
/// let mut report = Report::new("fanout");
/// report.figure("deliveries", 712_000.0, "/s");
/// report.note("subscribers", 10_000, "", "one topic");
/// let json = report.to_json();
/// assert_eq!(json["scenario"], "fanout");
/// assert_eq!(json["figures"]["deliveries"]["value"], 712_000.0);
/// assert!(report.to_table().contains("deliveries"));
/// ```
#[derive(Debug, Clone)]
pub struct Report {
    scenario: String,
    figures: Vec<Figure>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: impl Into<String>) -> Self {
        Self {
            scenario: scenario.into(),
            figures: Vec::new(),
        }
    }

    /// Adds a number with its unit.
    pub fn figure(
        &mut self,
        key: &'static str,
        value: impl Into<Value>,
        unit: &'static str,
    ) -> &mut Self {
        self.push(key, value.into(), unit, None)
    }

    /// Adds a number with its unit and a human explanation.
    pub fn note(
        &mut self,
        key: &'static str,
        value: impl Into<Value>,
        unit: &'static str,
        note: impl Into<String>,
    ) -> &mut Self {
        self.push(key, value.into(), unit, Some(note.into()))
    }

    /// Adds a latency distribution (µs): p50, p90, p99, p99.9 and max.
    pub fn latency(&mut self, key: &'static str, histogram: &Histogram<u64>) -> &mut Self {
        let value = json!({
            "p50": histogram.value_at_quantile(0.5),
            "p90": histogram.value_at_quantile(0.9),
            "p99": histogram.value_at_quantile(0.99),
            "p99.9": histogram.value_at_quantile(0.999),
            "max": histogram.max(),
        });
        self.push(key, value, "µs", None)
    }

    fn push(
        &mut self,
        key: &'static str,
        value: Value,
        unit: &'static str,
        note: Option<String>,
    ) -> &mut Self {
        self.figures.push(Figure {
            key,
            value,
            unit,
            note,
        });
        self
    }

    /// The value of a figure, if the report has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.figures
            .iter()
            .find(|figure| figure.key == key)
            .map(|figure| &figure.value)
    }

    /// `{"scenario": ..., "figures": {key: {"value", "unit", "note"?}}}`.
    pub fn to_json(&self) -> Value {
        let mut figures = Map::new();
        for figure in &self.figures {
            let mut entry = Map::new();
            entry.insert("value".into(), figure.value.clone());
            entry.insert("unit".into(), figure.unit.into());
            if let Some(note) = &figure.note {
                entry.insert("note".into(), note.clone().into());
            }
            figures.insert(figure.key.into(), Value::Object(entry));
        }
        json!({ "scenario": self.scenario, "figures": figures })
    }

    /// The aligned table.
    pub fn to_table(&self) -> String {
        let width = self
            .figures
            .iter()
            .map(|figure| figure.key.len())
            .max()
            .unwrap_or(0)
            .max("scenario".len());
        let mut table = format!("{:<width$}  {}\n", "scenario", self.scenario);
        for figure in &self.figures {
            let value = match &figure.value {
                Value::Object(parts) => {
                    let mut parts: Vec<_> = parts.iter().collect();
                    // JSON objects are sorted by key; show quantiles in order.
                    parts.sort_by_key(|(name, _)| QUANTILE_ORDER.iter().position(|q| q == name));
                    parts
                        .iter()
                        .map(|(name, value)| format!("{name} {}", plain(value)))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                value => plain(value),
            };
            let mut line = format!("{:<width$}  {value}", figure.key);
            if !figure.unit.is_empty() {
                line.push(' ');
                line.push_str(figure.unit);
            }
            if let Some(note) = &figure.note {
                line.push_str(&format!(" ({note})"));
            }
            table.push_str(line.trim_end());
            table.push('\n');
        }
        table
    }

    /// Prints the report in `format` on standard output.
    pub fn print(&self, format: Format) {
        match format {
            Format::Table => print!("{}", self.to_table()),
            Format::Json => println!("{}", self.to_json()),
        }
    }
}

/// The order a latency distribution's parts are shown in.
const QUANTILE_ORDER: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

/// A number as people read it: integers whole, others to one decimal (or
/// three below 10).
fn plain(value: &Value) -> String {
    match value {
        Value::Number(number) => match (number.as_u64(), number.as_f64()) {
            (Some(integer), _) => integer.to_string(),
            (None, Some(float)) if float.abs() >= 1000.0 => format!("{float:.0}"),
            (None, Some(float)) if float.abs() >= 10.0 => format!("{float:.1}"),
            (None, Some(float)) => format!("{float:.3}"),
            _ => number.to_string(),
        },
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
