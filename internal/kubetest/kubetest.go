// Package kubetest runs a real Kubernetes API server for tests, inside the
// test sandbox: etcd (Debian's etcd-server) and kube-apiserver (built by
// scripts/tools.sh into bin/tools/) start as children of the test in a
// network namespace of the test's own, with their state in a temp dir, and
// are killed by PID when the test ends. Nothing listens on the host's
// network: the API server listens on an address of that namespace, and
// the test's own clients reach it through a dialer that opens their
// sockets inside the namespace.
//
// Authentication is by static bearer tokens (one per User, the admin in
// system:masters), authorization by RBAC, so a test can run a component
// with exactly the ClusterRole it ships. The API server's serving
// certificate comes from a CA made for the test in the temp dir (the same
// across a Restart); kubeconfigs written by Kubeconfig trust that CA.
//
// Usage:
//
//	ns := testnet.NewNS(t, "pt-api-")
//	api := kubetest.Start(t, kubetest.Options{NS: ns})
//	api.Client.CoreV1().Nodes().Create(…)
//	kc := api.Kubeconfig(t, "admin") // for a process started in a namespace that reaches api.URL
//
// The API server is ready in 2–5 s here (its post-start hooks: RBAC
// bootstrap, priority classes, system namespaces).
//
// Env (env.go) builds a cluster around it: an underlay namespace holding
// the API server and a bridge, node namespaces joined to it with their
// Node objects, pierd in Kubernetes mode on each (with the RBAC rules of
// deploy/kubernetes/pier-kubernetes.yaml), and pods attached by the pier
// binary — for the e2e tests, the benchmarks, and the tests of other
// components that need nodes on a real API (network policy).
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/pier-cni/pier/internal/testnet"
)

// Options configures Start.
type Options struct {
	// NS is the network namespace etcd and the API server run in (required).
	NS *testnet.NS
	// Addr is the API server's address in NS; it must be on an interface
	// of NS (default 127.0.0.1, reachable from NS only).
	Addr netip.Addr
	// Users get a bearer token each, besides "admin" (system:masters).
	Users []User
	// Args are extra kube-apiserver flags.
	Args []string
}

// User is an identity a test's component authenticates as.
type User struct {
	Name   string
	Groups []string
}

// Port is the API server's secure port.
const Port = 6443

// APIServer is a running etcd + kube-apiserver.
type APIServer struct {
	// URL is https://<Addr>:6443.
	URL string
	// Client talks to it as admin, from the test process.
	Client kubernetes.Interface
	// Config is Client's config (its Dial enters NS).
	Config *rest.Config

	opts    Options
	dir     string
	tokens  map[string]string // user → token
	apiArgs []string
	api     *proc
	etcd    *proc
	apiLog  *lockedBuffer
	etcdLog *lockedBuffer
	stopped bool
	kcMu    sync.Mutex // guards the kubeconfig files
}

// proc is a child process and its exit.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once Wait returned
}

// startProc starts argv in the namespace at nsPath, its output to log.
func startProc(nsPath string, log *lockedBuffer, argv ...string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := testnet.StartIn(nsPath, cmd); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL (our own child, by PID) and waits for the exit.
func (p *proc) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// Binary returns the path of a Kubernetes tool built by scripts/tools.sh:
// $env when set, else bin/tools/<name> of this module. It skips the test
// when the tool is missing, or fails it with PIER_REQUIRE_RUNTIMES=1 (set
// by CI, which builds the tools).
func Binary(t testing.TB, name, env string) string {
	t.Helper()
	p := os.Getenv(env)
	if p == "" {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err == nil && strings.TrimSpace(string(out)) != "" {
			p = filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "bin", "tools", name)
		}
	}
	if _, err := os.Stat(p); p == "" || err != nil {
		msg := fmt.Sprintf("needs %s (scripts/tools.sh builds it into bin/tools; or set $%s)", name, env)
		if os.Getenv("PIER_REQUIRE_RUNTIMES") == "1" {
			t.Fatal(msg + " (PIER_REQUIRE_RUNTIMES=1)")
		}
		t.Skip(msg)
	}
	return p
}

// Start starts etcd and the API server in o.NS, waits until the API
// server is ready and registers their stop (SIGKILL, by PID) with
// t.Cleanup.
func Start(t testing.TB, o Options) *APIServer {
	t.Helper()
	testnet.RequireRoot(t)
	bin := Binary(t, "kube-apiserver", "PIER_KUBE_APISERVER")
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Skip("etcd is not installed (Debian package etcd-server)")
	}
	if o.NS == nil {
		t.Fatal("kubetest: Options.NS is required")
	}
	if !o.Addr.IsValid() {
		o.Addr = netip.MustParseAddr("127.0.0.1")
	}
	a := &APIServer{
		URL:    "https://" + netip.AddrPortFrom(o.Addr, Port).String(),
		opts:   o,
		dir:    t.TempDir(),
		tokens: map[string]string{},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log (tail):\n%s", a.apiLog.tail(6000))
			t.Logf("etcd log (tail):\n%s", a.etcdLog.tail(2000))
		}
		a.Stop()
	})
	a.startEtcd(t)
	a.startAPIServer(t, bin)
	a.Config = a.restConfig("admin")
	client, err := kubernetes.NewForConfig(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	a.Client = client
	a.waitReady(t)
	return a
}

func (a *APIServer) startEtcd(t testing.TB) {
	t.Helper()
	data := filepath.Join(a.dir, "etcd")
	// Loopback of NS: only the API server, in the same namespace, talks to
	// it. A second test's etcd is in its own namespace, so ports never clash.
	a.etcdLog = &lockedBuffer{}
	var err error
	a.etcd, err = startProc(a.opts.NS.Path, a.etcdLog, "etcd", "--name", "kubetest", "--data-dir", data,
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "kubetest=http://127.0.0.1:2380", "--log-level", "warn",
		// The API server compacts on its own schedule; etcd's quota is
		// more than tests need.
		"--quota-backend-bytes", "1073741824")
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
}

func (a *APIServer) startAPIServer(t testing.TB, bin string) {
	t.Helper()
	key := filepath.Join(a.dir, "sa.key")
	writeECKey(t, key)
	writeServingCert(t, a.dir, a.opts.Addr)
	tokens := filepath.Join(a.dir, "tokens.csv")
	a.writeTokens(t, tokens)
	args := []string{
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + a.opts.Addr.String(),
		"--advertise-address=" + a.opts.Addr.String(),
		fmt.Sprintf("--secure-port=%d", Port),
		"--tls-cert-file=" + filepath.Join(a.dir, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(a.dir, "apiserver.key"),
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + key + ".pub",
		"--service-account-signing-key-file=" + key,
		// Service addresses are only allocated, never routed here: a
		// documentation-free private range nothing in the sandbox uses.
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		// No Service of the API server's own endpoints: nothing in the
		// sandbox reaches the API through a Service address, and the
		// reconciler refuses a loopback address.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--v=1",
	}
	a.apiArgs = append(append([]string{bin}, args...), a.opts.Args...)
	a.apiLog = &lockedBuffer{}
	var err error
	if a.api, err = startProc(a.opts.NS.Path, a.apiLog, a.apiArgs...); err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
}

// writeECKey writes a P-256 key pair, the service-account signing key:
// the private key (SEC 1 PEM) to path, the public key (PKIX PEM) to
// path+".pub". P-256 rather than RSA: generated in microseconds.
func writeECKey(t testing.TB, path string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (a *APIServer) writeTokens(t testing.TB, path string) {
	t.Helper()
	users := append([]User{{Name: "admin", Groups: []string{"system:masters"}}}, a.opts.Users...)
	var b strings.Builder
	for i, u := range users {
		tok := testnet.UniqueName("kubetest-") + testnet.UniqueName("")
		a.tokens[u.Name] = tok
		fmt.Fprintf(&b, "%s,%s,uid-%d,%q\n", tok, u.Name, i, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// caFile is the CA of the API server's serving certificate, which clients
// trust.
func (a *APIServer) caFile() string { return filepath.Join(a.dir, "ca.crt") }

// restConfig is a config for user from the test process: its sockets are
// opened inside NS.
func (a *APIServer) restConfig(user string) *rest.Config {
	return &rest.Config{
		Host:            a.URL,
		BearerToken:     a.tokens[user],
		TLSClientConfig: rest.TLSClientConfig{CAFile: a.caFile()},
		Dial:            a.dialInNS,
		UserAgent:       "kubetest",
		QPS:             200,
		Burst:           400,
		Timeout:         30 * time.Second,
	}
}

// RESTConfig returns a client config for one of Options.Users (or
// "admin"), usable from the test process.
func (a *APIServer) RESTConfig(user string) *rest.Config { return a.restConfig(user) }

// dialInNS opens the connection's socket in NS (a socket keeps the network
// namespace it was created in), on a thread switched there and back.
func (a *APIServer) dialInNS(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := a.opts.NS.Do(func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

func (a *APIServer) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if !a.api.running() {
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		body, err := a.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready: %v\n%s", last, a.apiLog.tail(6000))
}

// Kubeconfig writes a kubeconfig for user (one of Options.Users, or
// "admin") into the temp dir and returns its path. It is for processes
// started in a namespace that reaches URL (NS itself, or a node namespace
// joined to NS).
func (a *APIServer) Kubeconfig(t testing.TB, user string) string {
	t.Helper()
	tok, ok := a.tokens[user]
	if !ok {
		t.Fatalf("kubetest: no user %q (Options.Users)", user)
	}
	path := filepath.Join(a.dir, "kubeconfig-"+user)
	a.kcMu.Lock()
	defer a.kcMu.Unlock()
	if _, err := os.Stat(path); err == nil {
		// Written once: a process started earlier may be reading it.
		return path
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: kubetest
  context: {cluster: kubetest, user: %s}
current-context: kubetest
`, a.URL, a.caFile(), user, tok, user)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// Stop kills the API server and etcd (SIGKILL: the API server does not
// exit on SIGTERM while its post-start hooks wait) and waits for them.
// Later calls do nothing.
func (a *APIServer) Stop() {
	if a.stopped {
		return
	}
	a.stopped = true
	a.api.kill()
	a.etcd.kill()
}

// StopAPIServer kills the API server only (etcd keeps its data), for tests
// of what happens while the API is unreachable; Restart brings it back.
func (a *APIServer) StopAPIServer() { a.api.kill() }

// Restart starts the API server again after StopAPIServer and waits until
// it is ready.
func (a *APIServer) Restart(t testing.TB) {
	t.Helper()
	var err error
	if a.api, err = startProc(a.opts.NS.Path, a.apiLog, a.apiArgs...); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	a.waitReady(t)
}

// Log returns the tail of the API server's log.
func (a *APIServer) Log() string { return a.apiLog.tail(20000) }

// lockedBuffer collects a child's output; Write comes from exec's copying
// goroutine while a test may read.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) tail(n int) string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
