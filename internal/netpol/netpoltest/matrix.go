// Package netpoltest holds the network policy scenarios Pier is tested
// with, after the upstream Kubernetes network policy end-to-end suite:
// three namespaces (x, y, z) of three pods (a, b, c) each, every pair
// probed on TCP 80, TCP 81 and UDP 80, and the result compared with an
// expected matrix written from the API's documented semantics. The same
// scenarios drive the engine's pure tests (an in-memory data plane) and
// the namespace tests (pods attached with the real plugin, real probes),
// so both check the same expectations.
package netpoltest

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Probe is one kind of connection a matrix tries.
type Probe struct {
	Proto string // "tcp" or "udp"
	Port  int
}

func (p Probe) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Port) }

// The upstream suite's probes, and the DNS port of the egress-to-DNS case.
var (
	TCP80 = Probe{"tcp", 80}
	TCP81 = Probe{"tcp", 81}
	UDP80 = Probe{"udp", 80}
	UDP53 = Probe{"udp", 53}

	DefaultProbes = []Probe{TCP80, TCP81, UDP80}
)

// Matrix is the reachability of every pod from every other pod for each
// probe. Pods are named "<namespace>/<pod>"; a pod never probes itself
// (loopback does not leave the pod).
type Matrix struct {
	Pods    []string
	Probes  []Probe
	allowed map[cell]bool
}

type cell struct {
	from, to string
	probe    Probe
}

// NewMatrix expects everything to be allowed, as without any policy.
func NewMatrix(pods []string, probes []Probe) *Matrix {
	m := &Matrix{Pods: slices.Clone(pods), Probes: slices.Clone(probes), allowed: map[cell]bool{}}
	m.Set(func(string, string, Probe) bool { return true }, true)
	return m
}

// Set sets every pair and probe that match selects to allowed.
func (m *Matrix) Set(match func(from, to string, p Probe) bool, allowed bool) *Matrix {
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if from == to {
				continue
			}
			for _, p := range m.Probes {
				if match(from, to, p) {
					m.allowed[cell{from, to, p}] = allowed
				}
			}
		}
	}
	return m
}

// Ingress sets everything reaching to.
func (m *Matrix) Ingress(to string, allowed bool) *Matrix {
	return m.Set(func(_, t string, _ Probe) bool { return t == to }, allowed)
}

// Egress sets everything leaving from.
func (m *Matrix) Egress(from string, allowed bool) *Matrix {
	return m.Set(func(f, _ string, _ Probe) bool { return f == from }, allowed)
}

// Pair sets from → to for the probes given (all when none).
func (m *Matrix) Pair(from, to string, allowed bool, probes ...Probe) *Matrix {
	return m.Set(func(f, t string, p Probe) bool {
		return f == from && t == to && (len(probes) == 0 || slices.Contains(probes, p))
	}, allowed)
}

// Allowed is the expectation for one cell.
func (m *Matrix) Allowed(from, to string, p Probe) bool { return m.allowed[cell{from, to, p}] }

// InNamespace reports whether pod ("ns/name") is in namespace ns.
func InNamespace(pod, ns string) bool { return strings.HasPrefix(pod, ns+"/") }

// Result is a probed matrix.
type Result struct {
	m   *Matrix
	got map[cell]bool
}

// NewResult starts recording probes for the cells of m.
func NewResult(m *Matrix) *Result { return &Result{m: m, got: map[cell]bool{}} }

// Record stores one probe's outcome.
func (r *Result) Record(from, to string, p Probe, ok bool) { r.got[cell{from, to, p}] = ok }

// Mismatches lists the cells whose outcome differs from the expectation.
func (r *Result) Mismatches() []Mismatch {
	var out []Mismatch
	for _, from := range r.m.Pods {
		for _, to := range r.m.Pods {
			if from == to {
				continue
			}
			for _, p := range r.m.Probes {
				want := r.m.Allowed(from, to, p)
				if got := r.got[cell{from, to, p}]; got != want {
					out = append(out, Mismatch{from, to, p, want})
				}
			}
		}
	}
	return out
}

// Mismatch is one cell probed otherwise than expected.
type Mismatch struct {
	From, To string
	Probe    Probe
	Want     bool
}

func (x Mismatch) String() string {
	verb := map[bool]string{true: "allowed", false: "denied"}
	return fmt.Sprintf("%s -> %s %s: want %s, got %s", x.From, x.To, x.Probe, verb[x.Want], verb[!x.Want])
}

// Render draws the matrix of one probe as the upstream suite prints it:
// rows are clients, columns servers, "." allowed, "X" denied; with a
// result, a wrong cell shows as "!".
func (r *Result) Render(p Probe) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\t%s\n", p, strings.Join(r.m.Pods, "\t"))
	for _, from := range r.m.Pods {
		b.WriteString(from)
		for _, to := range r.m.Pods {
			c := "-"
			if from != to {
				want, got := r.m.Allowed(from, to, p), r.got[cell{from, to, p}]
				c = map[bool]string{true: ".", false: "X"}[got]
				if got != want {
					c = "!"
				}
			}
			b.WriteString("\t" + c)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Cluster is what a scenario acts on: the pods' addresses (known once they
// are attached) and the objects it may change.
type Cluster interface {
	Addr(pod string) netip.Addr
	// NodeCIDR is the pod range of node 1 or 2.
	NodeCIDR(node int) netip.Prefix
	Apply(obj any) error // a *NetworkPolicy, *Pod or *Namespace
	DeletePolicy(namespace, name string) error
}
