package pierd

// Metrics, in Prometheus' text format on --metrics-addr (/metrics), with
// /healthz beside them. The listener has no authentication, so it is on
// 127.0.0.1 unless the operator says otherwise, and nothing a scrape does
// takes a lock that a call takes. Allocation and release counters come from
// the service itself (what each call reserved and released); pool size and
// use per range are read from the stores' directories (a snapshot, without
// their locks), so they are right even when local-mode plugins share a
// network's store.

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/pier-cni/pier/internal/ipamrpc"
)

const namespace = "pierd"

// maxScrapes bounds the /metrics requests served at once.
const maxScrapes = 4

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

// poolCollector reports pool size and use per range from a snapshot
// (ipamrpc.PoolSnapshot) that takes none of the locks an ADD takes: a
// scrape, which anyone who can reach the metrics address may send, never
// makes an ADD wait. Concurrent scrapes share one snapshot at most
// snapshotMaxAge old, so scraping in a loop costs one directory listing
// per network and second, not one per request.
type poolCollector struct {
	read       func() (map[string][]ipamrpc.PoolUsage, error)
	size, used *prometheus.Desc

	mu   sync.Mutex // guards the cached snapshot; held while one scrape reads it
	last map[string][]ipamrpc.PoolUsage
	err  error
	at   time.Time
}

// snapshotMaxAge: how stale a scrape's pool figures may be.
const snapshotMaxAge = time.Second

func newPoolCollector(read func() (map[string][]ipamrpc.PoolUsage, error)) *poolCollector {
	labels := []string{"network", "range_set", "range"}
	return &poolCollector{
		read: read,
		size: prometheus.NewDesc(namespace+"_ipam_pool_size", "Addresses a range can hand out (gateway excluded).", labels, nil),
		used: prometheus.NewDesc(namespace+"_ipam_pool_used", "Addresses of a range that are reserved.", labels, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.used
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	usage, err := c.snapshot()
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

func (c *poolCollector) snapshot() (map[string][]ipamrpc.PoolUsage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.at.IsZero() || time.Since(c.at) >= snapshotMaxAge {
		c.last, c.err = c.read()
		c.at = time.Now()
	}
	return c.last, c.err
}

// handler serves /metrics and /healthz; healthz fails once draining.
func (m *metrics) handler(draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	// A few scrapes at a time are plenty for Prometheus; more are answered
	// 503, so a local user scraping in a loop cannot take pierd's CPU.
	// A store that cannot be read loses its pool figures, not the rest.
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		MaxRequestsInFlight: maxScrapes, ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n")) // a failed write is the scraper's problem
	})
	return mux
}
