//! Prometheus metrics, served at `/metrics`.
//!
//! Each server owns its recorder (no process-global state), so several
//! servers can run in one process, as the tests do. Hot paths hold metric
//! handles and bump them once per batch or event, never per recipient.

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

pub struct Metrics {
    recorder: PrometheusRecorder,
    /// Open WebSocket connections.
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Channels with at least one member on this node.
    pub channels: Gauge,
    /// Tracked metas, and distinct presence keys, summed over channels.
    pub presences: Gauge,
    pub presence_keys: Gauge,
    pub channel_joins: Counter,
    pub channel_leaves: Counter,
    pub presence_diffs: Counter,
    pub broadcasts: Counter,
    pub frames_in: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    /// Frames waiting in a socket's queue when its writer woke (sampled per write).
    pub outbound_queue_depth: Histogram,
}

const META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let counter =
            |name: &'static str| recorder.register_counter(&Key::from_static_name(name), &META);
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &META);
        Metrics {
            connections: gauge("roster_connections"),
            connections_total: counter("roster_connections_total"),
            channels: gauge("roster_channels"),
            presences: gauge("roster_presences"),
            presence_keys: gauge("roster_presence_keys"),
            channel_joins: counter("roster_channel_joins_total"),
            channel_leaves: counter("roster_channel_leaves_total"),
            presence_diffs: counter("roster_presence_diffs_total"),
            broadcasts: counter("roster_broadcasts_total"),
            frames_in: counter("roster_frames_in_total"),
            bytes_in: counter("roster_bytes_in_total"),
            frames_out: counter("roster_frames_out_total"),
            bytes_out: counter("roster_bytes_out_total"),
            outbound_queue_depth: recorder
                .register_histogram(&Key::from_static_name("roster_outbound_queue_depth"), &META),
            recorder,
        }
    }

    fn labelled(&self, name: &'static str, label: &'static str, value: &str) -> Counter {
        let key = Key::from_parts(name, vec![Label::new(label, value.to_owned())]);
        self.recorder.register_counter(&key, &META)
    }

    /// A refused connection or REST call, by reason.
    pub fn auth_failure(&self, reason: &str) {
        self.labelled("roster_auth_failures_total", "reason", reason)
            .increment(1);
    }

    /// A socket that ended, by why (client_closed, idle_timeout, overflow, …).
    pub fn disconnect(&self, reason: &str) {
        self.labelled("roster_disconnects_total", "reason", reason)
            .increment(1);
    }

    /// A join refused, by the code of its reason (`TopicNameRequired`, …).
    pub fn join_refused(&self, code: &str) {
        self.labelled("roster_join_refusals_total", "code", code)
            .increment(1);
    }

    /// Webhook counters; registered (and so exported) only when webhooks
    /// are configured.
    pub fn webhooks(&self) -> WebhookMetrics {
        let outcome = |v| self.labelled("roster_webhook_deliveries_total", "outcome", v);
        let dropped = |v| self.labelled("roster_webhook_events_dropped_total", "reason", v);
        let counter = |name: &'static str| {
            self.recorder
                .register_counter(&Key::from_static_name(name), &META)
        };
        WebhookMetrics {
            events: counter("roster_webhook_events_total"),
            delivered: counter("roster_webhook_events_delivered_total"),
            dropped_queue_full: dropped("queue_full"),
            dropped_expired: dropped("expired"),
            dropped_shutdown: dropped("shutdown"),
            ok: outcome("ok"),
            retry: outcome("retry"),
            gave_up: outcome("dropped"),
        }
    }

    /// Input refused by a budget or rate (`topic_bytes`, `channel_rate`, …).
    pub fn refused(&self, budget: &str) {
        self.labelled("roster_refusals_total", "budget", budget)
            .increment(1);
    }

    /// A channel the server shut down (`system` error + `phx_close`), by why.
    pub fn channel_shutdown(&self, reason: &str) {
        self.labelled("roster_channel_shutdowns_total", "reason", reason)
            .increment(1);
    }

    /// Fold recorded histogram samples into their summaries. Without it the
    /// samples of an unscraped server would pile up without bound.
    pub fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

/// Webhook counters. Every event emitted counts in `events`, then, once
/// settled, in `delivered` or one of the `dropped_*` (so events − delivered −
/// dropped = still queued or in flight).
#[derive(Clone)]
pub struct WebhookMetrics {
    /// `roster_webhook_events_total`: events emitted.
    pub events: Counter,
    /// `roster_webhook_events_delivered_total`: events in a batch the receiver took (2xx).
    pub delivered: Counter,
    /// `roster_webhook_events_dropped_total{reason="queue_full"}`: the queue was full.
    pub dropped_queue_full: Counter,
    /// `{reason="expired"}`: their batch still failed after `webhook_max_retry_ms`.
    pub dropped_expired: Counter,
    /// `{reason="shutdown"}`: still queued when the server stopped.
    pub dropped_shutdown: Counter,
    /// `roster_webhook_deliveries_total{outcome="ok"}`: POSTs answered 2xx.
    pub ok: Counter,
    /// `{outcome="retry"}`: failed POSTs (error, timeout, non-2xx) to be retried.
    pub retry: Counter,
    /// `{outcome="dropped"}`: batches given up.
    pub gave_up: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
