package appservice

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the service's Prometheus metrics. Each Service has its own registry, so tests can
// run several services in one process.
type metrics struct {
	registry *prometheus.Registry

	txnReceived    *prometheus.CounterVec
	eventsReceived *prometheus.CounterVec
	ingestLatency  prometheus.Histogram
	inboxDepth     prometheus.Gauge
	eventsHandled  prometheus.Counter
	handlerErrors  *prometheus.CounterVec
	handleLatency  prometheus.Histogram
	decryption     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		txnReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custodian_transactions_received_total",
			Help: "Appservice transactions received from the homeserver, by outcome (accepted, duplicate, rejected).",
		}, []string{"outcome"}),
		eventsReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custodian_events_received_total",
			Help: "Events accepted into the inbox, by kind (pdu, ephemeral, to_device), to-device events dropped because they were not for the bot's device (to_device_dropped), and room key requests and olm unwedges dropped because too many waited for a worker (key_request_dropped).",
		}, []string{"kind"}),
		ingestLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "custodian_ingest_duration_seconds",
			Help:    "Time from receiving a transaction to acknowledging it (durably committed).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		inboxDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "custodian_inbox_depth",
			Help: "Events acknowledged but not yet handled, including to-device events kept in the inbox for a start with encryption.",
		}),
		eventsHandled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custodian_events_handled_total",
			Help: "Events whose handlers have returned.",
		}),
		handlerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custodian_handler_errors_total",
			Help: "Errors returned by event handlers, by module (core, bot, or a bridge ID).",
		}, []string{"module"}),
		handleLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "custodian_handle_duration_seconds",
			Help:    "Time spent handling one event.",
			Buckets: prometheus.DefBuckets,
		}),
		decryption: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custodian_decryption_total",
			Help: "Encrypted room events handled, by outcome (decrypted, missing_keys, failed).",
		}, []string{"outcome"}),
	}
	m.registry.MustRegister(
		m.txnReceived, m.eventsReceived, m.ingestLatency, m.inboxDepth,
		m.eventsHandled, m.handlerErrors, m.handleLatency, m.decryption,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Export zeroes from the start, so rate() and alerts work before the first error.
	for _, module := range []string{"core", "bot", "crypto"} {
		m.handlerErrors.WithLabelValues(module)
	}
	for _, outcome := range []string{"accepted", "duplicate", "rejected"} {
		m.txnReceived.WithLabelValues(outcome)
	}
	return m
}

// handler serves the registry in the Prometheus exposition format.
func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{}))
	return mux
}
