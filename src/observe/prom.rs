//! Writing metrics in the Prometheus (OpenMetrics) text format with the
//! Prometheus project's client: the values are read from the components
//! at scrape time by a [`Collector`], so one scrape is one consistent
//! snapshot and nothing has to be kept in step with the components.
//!
//! Names follow Prometheus conventions: the registry adds the `ddpm_`
//! prefix, the unit is a suffix (`_seconds`, `_bytes`), counters end in
//! `_total` (added by the encoder).

use std::fmt;

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeMetric;
pub use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType};
use prometheus_client::registry::Registry;
pub use prometheus_client::registry::Unit;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one series.
pub type Labels = Vec<(&'static str, String)>;

/// A registry whose metrics are `ddpm_*`, with `collector` in it.
pub fn registry(collector: impl Collector) -> Registry {
    let mut r = Registry::with_prefix("ddpm");
    r.register_collector(Box::new(collector));
    r
}

/// Something that writes its metrics at each scrape.
pub trait Exporter: Send + Sync + 'static {
    fn encode(&self, e: DescriptorEncoder<'_>) -> fmt::Result;
}

/// A registry that scrapes `exporter`.
pub fn registry_of<T: Exporter>(exporter: std::sync::Arc<T>) -> Registry {
    registry(Scrape(exporter))
}

/// The registry's view of an [`Exporter`].
struct Scrape<T>(std::sync::Arc<T>);

impl<T> fmt::Debug for Scrape<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<T>())
    }
}

impl<T: Exporter> Collector for Scrape<T> {
    fn encode(&self, e: DescriptorEncoder<'_>) -> fmt::Result {
        self.0.encode(e)
    }
}

/// The registry's metrics as text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector's error would be ours.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("cannot encode the metrics: {e}");
    }
    out
}

pub fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, unit: Option<&Unit>, v: f64) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// A gauge with one series per label set.
pub fn gauges(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, series: &[(Labels, f64)]) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

pub fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Counter)?)
}

pub fn histogram(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, unit: Option<&Unit>, h: &Histogram) -> fmt::Result {
    h.encode(e.encode_descriptor(name, help, unit, MetricType::Histogram)?)
}

/// Buckets for durations from 1 ms to about 17 minutes.
pub fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 21))
}

/// One sample of a scrape: `name{labels} value`, parsed back from the text
/// format (for tests and `ddpm status`-style readers; not a full parser).
pub fn parse_sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
            gauge(&mut e, "loss", "The loss.", None, 0.25)?;
            counter(&mut e, "reduced", "Bytes reduced.", Some(&Unit::Bytes), 7)?;
            gauges(&mut e, "jobs", "Jobs by state.", &[(vec![("state", "done".into())], 2.0)])?;
            let h = duration_buckets();
            h.observe(0.5);
            histogram(&mut e, "step", "Step time.", Some(&Unit::Seconds), &h)
        }
    }

    #[test]
    fn names_get_the_prefix_units_and_total() {
        let text = encode(&registry(Fixed));
        assert_eq!(parse_sample(&text, "ddpm_loss"), Some(0.25), "{text}");
        assert_eq!(parse_sample(&text, "ddpm_reduced_bytes_total"), Some(7.0), "{text}");
        assert_eq!(parse_sample(&text, "ddpm_jobs{state=\"done\"}"), Some(2.0), "{text}");
        assert_eq!(parse_sample(&text, "ddpm_step_seconds_count"), Some(1.0), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
