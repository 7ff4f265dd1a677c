package pierd

// Metrics, in Prometheus' text format on --metrics-addr (/metrics), with
// /healthz beside them. Allocation and release counters come from the
// service itself (what each call reserved and released); pool size and use
// per range are read from the store at each scrape, so they are right even
// when local-mode plugins share a network's store.

import (
	"context"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/pier-cni/pier/internal/ipamrpc"
)

const namespace = "pierd"

type metrics struct {
	reg      *prometheus.Registry
	latency  *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	allocs   *prometheus.CounterVec
	releases *prometheus.CounterVec
	refused  *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help: "Time pierd took to serve an IPAM call, by method.",
			// 50 µs … ~3 s: a call is ~0.1–1 ms, a lock wait can be seconds.
			Buckets: prometheus.ExponentialBuckets(50e-6, 3, 11),
		}, []string{"method"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "request_errors_total",
			Help: "IPAM calls that failed, by method and CNI error code.",
		}, []string{"method", "code"}),
		allocs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ipam_allocations_total",
			Help: "Addresses reserved, by network.",
		}, []string{"network"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "ipam_releases_total",
			Help: "Addresses released (DEL and GC), by network.",
		}, []string{"network"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "connections_refused_total",
			Help: "Connections refused at accept: reason uid (may not call) or limit (too many connections).",
		}, []string{"reason"}),
	}
	m.reg.MustRegister(m.latency, m.errors, m.allocs, m.releases, m.refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Changed implements ipamrpc.Observer.
func (m *metrics) Changed(network string, reserved, released int) {
	if reserved > 0 {
		m.allocs.WithLabelValues(network).Add(float64(reserved))
	}
	if released > 0 {
		m.releases.WithLabelValues(network).Add(float64(released))
	}
}

func (m *metrics) connRefused(reason string) { m.refused.WithLabelValues(reason).Inc() }

// observe records each call's latency and failure code.
func (m *metrics) observe() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		method := methodName(info.FullMethod)
		m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		if err != nil {
			m.errors.WithLabelValues(method, strconv.FormatUint(uint64(ipamrpc.CNICode(err)), 10)).Inc()
		}
		return resp, err
	}
}

func methodName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

// poolCollector reports pool size and use per range at scrape time.
type poolCollector struct {
	srv        *ipamrpc.Server
	size, used *prometheus.Desc
}

func newPoolCollector(srv *ipamrpc.Server) *poolCollector {
	labels := []string{"network", "range_set", "range"}
	return &poolCollector{
		srv:  srv,
		size: prometheus.NewDesc(namespace+"_ipam_pool_size", "Addresses a range can hand out (gateway excluded).", labels, nil),
		used: prometheus.NewDesc(namespace+"_ipam_pool_used", "Addresses of a range that are reserved.", labels, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.used
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	usage, err := c.srv.PoolUsage(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.used, err)
		return
	}
	for network, pools := range usage {
		for _, p := range pools {
			labels := []string{network, strconv.Itoa(p.RangeSet), p.RangeStart.String() + "-" + p.RangeEnd.String()}
			ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(p.Size), labels...)
			ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(p.Used), labels...)
		}
	}
}

// handler serves /metrics and /healthz; healthz fails once draining.
func (m *metrics) handler(draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n")) // a failed write is the scraper's problem
	})
	return mux
}
