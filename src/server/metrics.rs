//! Prometheus metrics of the server (text exposition at `GET /metrics`). Durations in seconds.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every series the server exports. Cheap to clone (handles are reference counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `imgclass_http_requests_total{route,status,model}` (`model` = the model that answered, or `none`).
    pub requests: IntCounterVec,
    /// `imgclass_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `imgclass_preprocess_duration_seconds` (decode + resize + crop + normalise of one image).
    pub preprocess_duration: Histogram,
    /// `imgclass_inference_duration_seconds{model}` (one forward pass, whatever the batch size).
    pub inference_duration: HistogramVec,
    /// `imgclass_inference_batch_size{model}`.
    pub batch_size: HistogramVec,
    /// `imgclass_inference_passes_total{model,mode}`: `pool` (the pass ran on every compute
    /// thread) or `instance` (on one thread, beside another pass; see `--instances`).
    pub passes: IntCounterVec,
    /// `imgclass_http_requests_in_flight`.
    pub in_flight: IntGauge,
    /// `imgclass_queue_depth`: classify requests waiting for a processing slot.
    pub queue_depth: IntGauge,
    /// `imgclass_engine_queue_depth{model}`: images waiting for a forward pass.
    pub engine_queue_depth: IntGaugeVec,
    /// `imgclass_fallbacks_total{reason}` (`error` | `deadline`).
    pub fallbacks: IntCounterVec,
    /// `imgclass_shed_requests_total{reason}` (`overloaded` | `not_ready` | `shutting_down` | `timeout`).
    pub shed: IntCounterVec,
    /// `imgclass_ready` (1 when `/readyz` answers 200).
    pub ready: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "imgclass_http_requests_total",
                "HTTP requests by route, status code and answering model",
            ),
            &["route", "status", "model"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "imgclass_http_request_duration_seconds",
                "Time from request headers to response, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let preprocess_duration = Histogram::with_opts(
            HistogramOpts::new(
                "imgclass_preprocess_duration_seconds",
                "Decoding and preprocessing time of one image",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let inference_duration = HistogramVec::new(
            HistogramOpts::new(
                "imgclass_inference_duration_seconds",
                "Time of one forward pass (one batch), by model",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )?;
        let batch_size = HistogramVec::new(
            HistogramOpts::new(
                "imgclass_inference_batch_size",
                "Images per forward pass, by model",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            &["model"],
        )?;
        let passes = IntCounterVec::new(
            Opts::new(
                "imgclass_inference_passes_total",
                "Forward passes, by model and mode (pool: on every compute thread; instance: on one thread beside another pass)",
            ),
            &["model", "mode"],
        )?;
        let in_flight = IntGauge::new(
            "imgclass_http_requests_in_flight",
            "HTTP requests being handled",
        )?;
        let queue_depth = IntGauge::new(
            "imgclass_queue_depth",
            "Classify requests waiting for a processing slot",
        )?;
        let engine_queue_depth = IntGaugeVec::new(
            Opts::new(
                "imgclass_engine_queue_depth",
                "Images waiting for a forward pass, by model",
            ),
            &["model"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "imgclass_fallbacks_total",
                "Full profile: requests answered by the fallback model, by reason",
            ),
            &["reason"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "imgclass_shed_requests_total",
                "Classify requests refused with 503, by reason",
            ),
            &["reason"],
        )?;
        let ready = IntGauge::new("imgclass_ready", "1 when the server is ready to classify")?;

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(preprocess_duration.clone()))?;
        registry.register(Box::new(inference_duration.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(passes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(engine_queue_depth.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            request_duration,
            preprocess_duration,
            inference_duration,
            batch_size,
            passes,
            in_flight,
            queue_depth,
            engine_queue_depth,
            fallbacks,
            shed,
            ready,
        })
    }

    /// Make labelled series visible at 0 before the first event (dashboards and tests see them).
    pub fn init_series(&self, models: &[&str]) {
        for m in models {
            self.inference_duration.with_label_values(&[m]);
            self.batch_size.with_label_values(&[m]);
            self.engine_queue_depth.with_label_values(&[m]).set(0);
        }
        for r in ["error", "deadline"] {
            self.fallbacks.with_label_values(&[r]);
        }
        for r in ["overloaded", "not_ready", "shutting_down", "timeout"] {
            self.shed.with_label_values(&[r]);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_series_are_exported() {
        let m = Metrics::new().unwrap();
        m.init_series(&["mobilenet_v3_large"]);
        m.requests
            .with_label_values(&["/classify", "200", "mobilenet_v3_large"])
            .inc();
        m.request_duration
            .with_label_values(&["/classify"])
            .observe(0.1);
        let text = m.render();
        for name in [
            "imgclass_http_requests_total{model=\"mobilenet_v3_large\",route=\"/classify\",status=\"200\"} 1",
            "imgclass_http_request_duration_seconds_bucket",
            "imgclass_preprocess_duration_seconds_count 0",
            "imgclass_inference_duration_seconds_count{model=\"mobilenet_v3_large\"} 0",
            "imgclass_http_requests_in_flight 0",
            "imgclass_queue_depth 0",
            "imgclass_fallbacks_total{reason=\"deadline\"} 0",
            "imgclass_shed_requests_total{reason=\"overloaded\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
