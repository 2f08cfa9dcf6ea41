//! Prometheus' text exposition format, version 0.0.4: a `# HELP` and a
//! `# TYPE` line per family, then one line per sample, `name{labels} value`.
//! Label values escape `\`, `"` and line feeds; help texts escape `\` and line
//! feeds. Integers are written exactly; other values as the shortest decimal
//! that reads back as the same number.

use std::fmt::Write;

use super::histogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The text of one scrape, written family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its samples follow.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// A sample whose value is a count.
    pub fn integer(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// A sample whose value is a measure (seconds, a ratio).
    pub fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels, None);
        self.text.push(' ');
        write_float(&mut self.text, value);
        self.text.push('\n');
    }

    /// A histogram's samples: its cumulative buckets (`le` in seconds, the
    /// last `+Inf`), `_sum` in seconds and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let bucket_name = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, cumulative) in histogram.cumulative_buckets() {
            le.clear();
            match bound {
                Some(bound) => write_float(&mut le, bound),
                None => le.push_str("+Inf"),
            }
            self.name_and_labels(&bucket_name, labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        self.float(&format!("{name}_sum"), labels, histogram.sum_seconds());
        self.integer(&format!("{name}_count"), labels, histogram.count());
    }

    pub fn finish(self) -> String {
        self.text
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.text.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (index, (label, value)) in all.enumerate() {
            if index > 0 {
                self.text.push(',');
            }
            self.text.push_str(label);
            self.text.push_str("=\"");
            escape_label_value(&mut self.text, value);
            self.text.push('"');
        }
        self.text.push('}');
    }
}

fn escape_label_value(text: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => text.push_str("\\\\"),
            '"' => text.push_str("\\\""),
            '\n' => text.push_str("\\n"),
            other => text.push(other),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_float(text: &mut String, value: f64) {
    if value.is_nan() {
        text.push_str("NaN");
    } else if value.is_infinite() {
        text.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        // Rust writes the shortest decimal that reads back the same, never an exponent.
        let _ = write!(text, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_are_written_as_prometheus_reads_them() {
        let mut exposition = Exposition::default();
        exposition.family("apiary_things_total", MetricKind::Counter, "Things done.");
        exposition.integer("apiary_things_total", &[], 3);
        exposition.family("apiary_ratio", MetricKind::Gauge, "A ratio.");
        exposition.float("apiary_ratio", &[("pool", "ci"), ("os", "linux")], 0.25);
        exposition.float("apiary_ratio", &[("pool", "nan")], f64::NAN);
        assert_eq!(
            exposition.finish(),
            "# HELP apiary_things_total Things done.\n\
             # TYPE apiary_things_total counter\n\
             apiary_things_total 3\n\
             # HELP apiary_ratio A ratio.\n\
             # TYPE apiary_ratio gauge\n\
             apiary_ratio{pool=\"ci\",os=\"linux\"} 0.25\n\
             apiary_ratio{pool=\"nan\"} NaN\n"
        );
    }

    #[test]
    fn label_values_and_help_texts_are_escaped() {
        let mut exposition = Exposition::default();
        exposition.family("apiary_x", MetricKind::Gauge, "Back\\slash and\nline feed.");
        exposition.integer("apiary_x", &[("pool", "a\"b\\c\nd")], 1);
        assert_eq!(
            exposition.finish(),
            "# HELP apiary_x Back\\\\slash and\\nline feed.\n\
             # TYPE apiary_x gauge\n\
             apiary_x{pool=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_a_sum_and_a_count() {
        static BOUNDS_US: [u64; 3] = [1_000, 250_000, 2_000_000];
        let mut histogram = Histogram::new(&BOUNDS_US);
        for micros in [500, 1_000, 1_001, 3_000_000] {
            histogram.observe_micros(micros);
        }
        let mut exposition = Exposition::default();
        exposition.family("apiary_wait_seconds", MetricKind::Histogram, "Waits.");
        exposition.histogram("apiary_wait_seconds", &[("kind", "a")], &histogram);
        assert_eq!(
            exposition.finish(),
            "# HELP apiary_wait_seconds Waits.\n\
             # TYPE apiary_wait_seconds histogram\n\
             apiary_wait_seconds_bucket{kind=\"a\",le=\"0.001\"} 2\n\
             apiary_wait_seconds_bucket{kind=\"a\",le=\"0.25\"} 3\n\
             apiary_wait_seconds_bucket{kind=\"a\",le=\"2\"} 3\n\
             apiary_wait_seconds_bucket{kind=\"a\",le=\"+Inf\"} 4\n\
             apiary_wait_seconds_sum{kind=\"a\"} 3.002501\n\
             apiary_wait_seconds_count{kind=\"a\"} 4\n"
        );
    }
}
