package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pier-cni/pier/internal/testnet"
)

// unset, as an env override, removes the variable instead of setting it.
const unset = "\x00unset"

// hardenedCase is one bad input: env overrides on top of a well-formed ADD,
// the config on stdin, the CNI error code it must produce and, optionally,
// words the message must contain.
type hardenedCase struct {
	name   string
	env    map[string]string
	conf   string
	code   uint
	msgHas []string
}

// nodeState is what a refused call must leave exactly as it found it.
type nodeState struct {
	Reservations string
	Links        string
	Addrs        string
	Ruleset      string
	StoreFiles   []string // "path sha256" under the IPAM dataDir
}

func (s nodeState) diff(o nodeState) []string {
	var d []string
	if s.Reservations != o.Reservations {
		d = append(d, fmt.Sprintf("reservations:\n  before %s\n  after  %s", s.Reservations, o.Reservations))
	}
	if s.Links != o.Links {
		d = append(d, fmt.Sprintf("node links:\n  before %s\n  after  %s", s.Links, o.Links))
	}
	if s.Addrs != o.Addrs {
		d = append(d, fmt.Sprintf("node addresses:\n  before %s\n  after  %s", s.Addrs, o.Addrs))
	}
	if s.Ruleset != o.Ruleset {
		d = append(d, fmt.Sprintf("node nftables ruleset:\n  before %s\n  after  %s", s.Ruleset, o.Ruleset))
	}
	if !slices.Equal(s.StoreFiles, o.StoreFiles) {
		d = append(d, fmt.Sprintf("IPAM dataDir files:\n  before %v\n  after  %v", s.StoreFiles, o.StoreFiles))
	}
	return d
}

// TestHardenedInput feeds `pier` ADDs with bad environment and bad configs
// on a node that already holds one live container, and checks for each that
// the refusal is a clean CNI error (exit 1, one JSON object on stdout with the
// expected code and a message, no Go stack trace) and that nothing changed:
// the store, the node's links, addresses and nftables ruleset, the files
// under the dataDir, and the live container's address.
func TestHardenedInput(t *testing.T) {
	n := newNode(t)
	good := classicConf("1.0.0", n.dataDir)
	live := n.container("live-1")
	n.mustAdd(live, good)
	bad := n.container("hard-1")
	empty := n.sb.Container() // never configured by any case: must stay bare

	base := map[string]string{
		"CNI_COMMAND": "ADD", "CNI_CONTAINERID": bad.id, "CNI_NETNS": bad.ns.Path,
		"CNI_IFNAME": "eth0", "CNI_PATH": n.cniPath,
	}
	run := func(env map[string]string, conf string) testnet.PluginRun {
		merged := map[string]string{}
		for k, v := range base {
			merged[k] = v
		}
		for k, v := range env {
			merged[k] = v
		}
		var list []string
		for k, v := range merged {
			if v != unset {
				list = append(list, k+"="+v)
			}
		}
		sort.Strings(list)
		return n.sb.Exec(filepath.Join(n.binDir, "pier"), list, []byte(conf))
	}

	before := settledState(t, n, good)
	if !strings.Contains(before.Reservations, "live-1") || len(before.StoreFiles) == 0 {
		t.Fatalf("the live container is not in the store: %+v", before)
	}

	for _, tc := range hardenedCases(n, good, live) {
		t.Run(tc.name, func(t *testing.T) {
			r := run(tc.env, tc.conf)
			checkCleanError(t, r.ExitCode, r.Stdout, r.Stderr, tc.code, tc.msgHas)

			after := nodeSnapshot(t, n, good)
			if d := before.diff(after); len(d) > 0 {
				t.Errorf("state changed by a refused ADD:\n%s", strings.Join(d, "\n"))
				// Best effort: undo what the call left so the cases after
				// this one are judged on their own, then take a new baseline.
				run(map[string]string{"CNI_COMMAND": "DEL", "CNI_ARGS": unset}, good)
				before = settledState(t, n, good)
			}
			checkLiveContainer(t, live)
			if links := ipJSON[[]ipLink](t, bad.ns, "link", "show"); len(links) != 1 || links[0].IfName != "lo" {
				t.Errorf("the bad call's container namespace holds more than lo: %+v", links)
			}
			if links := ipJSON[[]ipLink](t, empty, "link", "show"); len(links) != 1 {
				t.Errorf("an unrelated container namespace changed: %+v", links)
			}
		})
	}

	// Not a table case: a valid config padded to 1 MiB with an unknown key.
	// Unknown keys are ignored (runtimes and meta-plugins add their own, as
	// the reference plugins allow) and no size limit is documented,
	// so pier may serve it or refuse it; either way the outcome must be
	// clean: a result and a working attachment that DEL removes entirely,
	// or a CNI error that leaves nothing behind.
	t.Run("1 MiB valid config with an unknown key", func(t *testing.T) {
		big := strings.Replace(good, `"type": "pier",`,
			`"type": "pier", "x-padding": "`+strings.Repeat("a", 1<<20)+`",`, 1)
		if len(big) < 1<<20 || !json.Valid([]byte(big)) {
			t.Fatalf("padded config is %d bytes, valid %v", len(big), json.Valid([]byte(big)))
		}
		c := n.container("big-1")
		r := n.call("ADD", c, big)
		if r.ExitCode == 0 {
			var res struct {
				IPs []struct {
					Address string `json:"address"`
				} `json:"ips"`
			}
			if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil || len(res.IPs) != 1 {
				t.Fatalf("result of the 1 MiB config: %v\n%s", err, r.Stdout)
			}
			eth0 := ipJSON[[]ipLink](t, c.ns, "addr", "show", "dev", "eth0")
			if len(eth0) != 1 || !slices.Equal(eth0[0].addrs("inet"), []string{res.IPs[0].Address}) {
				t.Errorf("big-config container has %+v, want %s", eth0, res.IPs[0].Address)
			}
			n.mustDel(c, big)
			if links := ipJSON[[]ipLink](t, c.ns, "link", "show"); len(links) != 1 {
				t.Errorf("DEL left links in the container: %+v", links)
			}
		} else {
			checkCleanError(t, r.ExitCode, r.Stdout, r.Stderr, 0, nil)
		}
		after := nodeSnapshot(t, n, good)
		if r.ExitCode == 0 {
			// A served ADD moves the round-robin hint: compare the file
			// list, not the contents.
			after.StoreFiles, before.StoreFiles = names(after.StoreFiles), names(before.StoreFiles)
		}
		if d := before.diff(after); len(d) > 0 {
			t.Errorf("state after the 1 MiB config (exit %d) differs:\n%s", r.ExitCode, strings.Join(d, "\n"))
		}
		checkLiveContainer(t, live)
	})
}

// hardenedCases is the table. Codes follow README "Errors";
// where two codes could fit, the comment says why this one.
func hardenedCases(n *node, good string, live attachment) []hardenedCase {
	// withKey adds top-level keys right after "type": "pier".
	withKey := func(kv string) string {
		return strings.Replace(good, `"type": "pier",`, `"type": "pier", `+kv+`,`, 1)
	}
	// withIPAM replaces the ipam section's ranges with body.
	withIPAM := func(body string) string {
		return fmt.Sprintf(`{ "cniVersion": "1.0.0", "name": "mybridge", "type": "pier",
  "bridge": "cni_bridge0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
  "ipam": { "type": "pier-ipam", "dataDir": %q, %s } }`, n.dataDir, body)
	}
	subnet := func(s string) string { return strings.Replace(good, "10.15.20.0/24", s, 1) }
	env := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	id300 := "c" + strings.Repeat("0123456789", 30)[:299]
	oneMiBInvalid := `{"cniVersion": "1.0.0", "name": "mybridge", "type": "pier", "pad": "` + strings.Repeat("x", 1<<20)

	return []hardenedCase{
		// CNI_COMMAND: skel refuses a verb it does not know with 4.
		{"CNI_COMMAND unknown", env("CNI_COMMAND", "FOO"), good, 4, nil},
		{"CNI_COMMAND in lower case", env("CNI_COMMAND", "add"), good, 4, nil},

		// CNI_CONTAINERID: the spec's grammar is [a-zA-Z0-9][a-zA-Z0-9_.-]*.
		{"CNI_CONTAINERID with a slash", env("CNI_CONTAINERID", "abc/def"), good, 4, nil},
		{"CNI_CONTAINERID dot-dot", env("CNI_CONTAINERID", ".."), good, 4, nil},
		{"CNI_CONTAINERID with spaces", env("CNI_CONTAINERID", "abc def"), good, 4, nil},
		// 300 characters fit the spec's grammar but not what Pier records
		// it in: the host veth's alias (IFALIASZ, 255 bytes) and the store's
		// file names (NAME_MAX, 255). 4 names the variable at fault, so a
		// runtime knows its id, not the node, is the problem; a 5 would
		// read as a transient I/O failure worth retrying.
		{"CNI_CONTAINERID of 300 characters", env("CNI_CONTAINERID", id300), good, 4, nil},

		// CNI_NETNS: anything that is not a container's network namespace.
		{"CNI_NETNS does not exist", env("CNI_NETNS", "/var/run/netns/pt-hardened-none"), good, 4, nil},
		{"CNI_NETNS is a regular file", env("CNI_NETNS", "/etc/passwd"), good, 4, nil},
		{"CNI_NETNS is a regular file in procfs", env("CNI_NETNS", "/proc/self/status"), good, 4, nil},
		{"CNI_NETNS is a directory", env("CNI_NETNS", "/tmp"), good, 4, nil},
		{"CNI_NETNS is a directory in procfs", env("CNI_NETNS", "/proc/self"), good, 4, nil},
		{"CNI_NETNS is the node's own, through /run", env("CNI_NETNS", "/run/netns/"+n.sb.Node.Name), good, 4, nil},
		{"CNI_NETNS is the plugin's /proc/self/ns/net", env("CNI_NETNS", "/proc/self/ns/net"), good, 4, nil},
		{"CNI_NETNS is a mount namespace", env("CNI_NETNS", "/proc/self/ns/mnt"), good, 4, nil},

		// CNI_IFNAME: skel applies the kernel's rules.
		{"CNI_IFNAME set but empty", env("CNI_IFNAME", ""), good, 4, nil},
		{"CNI_IFNAME of 16 bytes", env("CNI_IFNAME", "abcdefghijklmnop"), good, 4, nil},
		{"CNI_IFNAME with a slash", env("CNI_IFNAME", "eth/0"), good, 4, nil},
		{"CNI_IFNAME with a colon", env("CNI_IFNAME", "net:1"), good, 4, nil},
		{"CNI_IFNAME with a space", env("CNI_IFNAME", "eth 0"), good, 4, nil},
		{"CNI_IFNAME dot", env("CNI_IFNAME", "."), good, 4, nil},
		{"CNI_IFNAME dot-dot", env("CNI_IFNAME", ".."), good, 4, nil},

		// CNI_ARGS: a string that does not parse, or names keys nobody
		// knows without IgnoreUnknown, is an invalid CNI_* variable.
		{"CNI_ARGS a=b=c", env("CNI_ARGS", "a=b=c"), good, 4, []string{"CNI_ARGS"}},
		{"CNI_ARGS =x", env("CNI_ARGS", "=x"), good, 4, []string{"CNI_ARGS"}},
		{"CNI_ARGS MAC without a value", env("CNI_ARGS", "MAC"), good, 4, []string{"CNI_ARGS"}},
		{"CNI_ARGS unknown key", env("CNI_ARGS", "FOO=bar"), good, 4, []string{"CNI_ARGS"}},
		{"CNI_ARGS IgnoreUnknown not a boolean", env("CNI_ARGS", "IgnoreUnknown=maybe;FOO=bar"), good, 4, []string{"CNI_ARGS"}},
		// IP= parses as a pair; its value is a requested address, the same
		// request as runtimeConfig.ips and args.cni.ips, and a bad requested
		// address is refused with 7 whichever channel carried it (as
		// TestBadInput does for IP=10.15.20.300), so a runtime sees one code
		// for one mistake.
		{"CNI_ARGS IP not an address", env("CNI_ARGS", "IP=not-an-ip"), good, 7, []string{"not-an-ip"}},

		// Attachments that collide with the live container.
		{"CNI_IFNAME already in the target namespace", env("CNI_NETNS", live.ns.Path), good, 100, nil},
		{"repeated ADD of the live attachment", env("CNI_CONTAINERID", live.id, "CNI_NETNS", live.ns.Path), good, 100, nil},
		{"CNI_ARGS IP held by the live container", env("CNI_ARGS", "IP=10.15.20.2"), good, 101, []string{"live-1"}},
		{"CNI_ARGS IP outside every range", env("CNI_ARGS", "IP=10.99.0.5"), good, 101, []string{"10.99.0.5"}},

		// Plugin types that are paths (CVE-2021-20206): a config must name a
		// plugin in CNI_PATH, never a binary elsewhere on the node.
		{"type is a relative path", nil, strings.Replace(good, `"type": "pier"`, `"type": "../bin/sh"`, 1), 7, []string{"type"}},
		{"type is an absolute path", nil, strings.Replace(good, `"type": "pier"`, `"type": "/usr/bin/true"`, 1), 7, []string{"type"}},
		{"ipam.type is an absolute path", nil, strings.Replace(good, `"type": "pier-ipam"`, `"type": "/usr/bin/true"`, 1), 7, []string{"ipam.type"}},
		{"ipam.type is a relative path", nil, strings.Replace(good, `"type": "pier-ipam"`, `"type": "../bin/sh"`, 1), 7, []string{"ipam.type"}},

		// Configs that do not decode.
		{"config truncated", nil, good[:len(good)/2], 6, nil},
		{"config is a JSON array", nil, `[{"cniVersion": "1.0.0", "name": "mybridge", "type": "pier"}]`, 6, nil},
		{"config is a JSON string", nil, `"mybridge"`, 6, nil},
		{"config is empty", nil, "", 6, nil},
		// Go (and skel) decode null as an empty object, so the refusal is
		// "missing network name", 7. Both 6 and 7 tell a runtime "fix the
		// config, do not retry"; the message is accurate either way.
		{"config is null", nil, "null", 7, nil},
		{"config is 1 MiB of invalid JSON", nil, oneMiBInvalid, 6, nil},
		{"config has trailing garbage", nil, good + "}", 6, nil},

		// Names.
		{"config without a name", nil, strings.Replace(good, `"name": "mybridge",`, "", 1), 7, nil},
		// The spec sets no length, but the name becomes a directory under
		// dataDir (NAME_MAX 255), nftables object names and the veth alias
		// (IFALIASZ 255): a name Pier cannot record is an invalid config.
		{"network name of 300 characters", nil, strings.Replace(good, `"name": "mybridge"`, `"name": "n`+strings.Repeat("a", 299)+`"`, 1), 7, []string{"name"}},
		{"name with invalid characters", nil, strings.Replace(good, `"name": "mybridge"`, `"name": "my bridge/.."`, 1), 7, nil},

		// Subnets and ranges.
		{"subnet prefix /33", nil, subnet("10.0.0.0/33"), 7, []string{"10.0.0.0/33"}},
		{"subnet octet 256", nil, subnet("10.0.0.256/24"), 7, []string{"10.0.0.256/24"}},
		{"subnet prefix /129", nil, subnet("fd00::/129"), 7, []string{"fd00::/129"}},
		{"subnet nonsense", nil, subnet("nonsense"), 7, []string{"nonsense"}},
		{"overlapping range sets", nil, withIPAM(`"ranges": [[{"subnet": "10.15.20.0/24"}], [{"subnet": "10.15.20.0/25"}]]`), 7, []string{"overlaps"}},
		{"overlapping ranges in one set", nil, withIPAM(`"ranges": [[
			{"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.10", "rangeEnd": "10.15.20.50"},
			{"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.40", "rangeEnd": "10.15.20.60"}]]`), 7, []string{"overlaps"}},
		{"gateway outside its subnet in ranges", nil, withIPAM(`"ranges": [[{"subnet": "10.15.20.0/24", "gateway": "10.15.21.1"}]]`), 7, []string{"10.15.21.1"}},
		{"rangeStart after rangeEnd", nil, withIPAM(`"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.50", "rangeEnd": "10.15.20.40"`), 7, []string{"rangeStart"}},
		{"range holding only the gateway", nil, withIPAM(`"subnet": "10.15.20.0/24", "rangeStart": "10.15.20.1", "rangeEnd": "10.15.20.1", "gateway": "10.15.20.1"`), 7, []string{"gateway"}},
		{"subnet /31", nil, withIPAM(`"subnet": "10.15.20.0/31"`), 7, []string{"/31"}},
		{"subnet /32", nil, withIPAM(`"subnet": "10.15.20.1/32"`), 7, []string{"/32"}},
		{"rangeEnd outside its subnet", nil, withIPAM(`"subnet": "10.15.20.0/24", "rangeEnd": "10.15.21.10"`), 7, []string{"10.15.21.10"}},
		{"mixed families in one range set", nil, withIPAM(`"ranges": [[{"subnet": "10.15.20.0/24"}, {"subnet": "fd00:15:20::/64"}]]`), 7, []string{"families"}},
		{"relative dataDir", nil, strings.Replace(good, fmt.Sprintf("%q", n.dataDir), `"var/lib/pier"`, 1), 7, []string{"dataDir"}},
		{"route without dst", nil, strings.Replace(good, `{ "dst": "0.0.0.0/0" }`, `{ "gw": "10.15.20.1" }`, 1), 7, []string{"dst"}},

		// MTU: 0 means the kernel default; otherwise 68..65535.
		{"mtu -1", nil, withKey(`"mtu": -1`), 7, []string{"mtu"}},
		{"mtu 67", nil, withKey(`"mtu": 67`), 7, []string{"mtu"}},
		{"mtu 65536", nil, withKey(`"mtu": 65536`), 7, []string{"mtu"}},
		// A number in a string is not a number: the config does not decode.
		{"mtu as a string", nil, withKey(`"mtu": "1500"`), 6, nil},

		// Versions: 1 is the code a runtime reacts to (it may retry with a
		// version from the plugin's VERSION answer); a malformed version is
		// still a version the plugin does not support.
		{"cniVersion 9.9.9", nil, strings.Replace(good, `"1.0.0"`, `"9.9.9"`, 1), 1, nil},
		{"cniVersion 1.x", nil, strings.Replace(good, `"1.0.0"`, `"1.x"`, 1), 1, nil},

		// prevResult that does not decode (README: code 6).
		{"prevResult with ips a string", nil, withKey(`"prevResult": {"cniVersion": "1.0.0", "ips": "nope"}`), 6, []string{"prevResult"}},
		{"prevResult a number", nil, withKey(`"prevResult": 5`), 6, nil},

		// Known keys Pier cannot honour: 2, naming key and value. "vlan":
		// 5000 is also outside 802.1Q's 0..4094, but Pier supports no VLAN
		// at all, and "unsupported" is the answer that stays true after the
		// user fixes the number.
		{"ipMasqBackend iptables", nil, withKey(`"ipMasqBackend": "iptables"`), 2, []string{"ipMasqBackend", "iptables"}},
		{"vlan 5000", nil, withKey(`"vlan": 5000`), 2, []string{"vlan", "5000"}},
		{"portMappings protocol icmp", nil, withKey(`"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}]}`), 2, []string{"portMappings", "icmp"}},

		// Other config values.
		{"bridge name of 16 bytes", nil, strings.Replace(good, "cni_bridge0", "cni_bridge012345", 1), 7, []string{"bridge"}},
		{"bridge name with a slash", nil, strings.Replace(good, "cni_bridge0", "br/0", 1), 7, []string{"bridge"}},
		{"multicast MAC in runtimeConfig", nil, withKey(`"runtimeConfig": {"mac": "01:00:5e:00:00:01"}`), 7, []string{"runtimeConfig.mac"}},
		{"unknown logLevel", nil, withKey(`"logLevel": "chatty"`), 7, []string{"logLevel"}},
	}
}

// checkCleanError asserts the CNI error contract: exit 1, stdout is exactly
// one JSON object with a code (want, unless 0) and a non-empty msg, and no
// Go stack trace anywhere. It reports with t.Errorf and stops at the first
// broken rule, so the caller still checks the state the call left.
func checkCleanError(t *testing.T, exit int, stdout, stderr string, want uint, msgHas []string) {
	t.Helper()
	for _, marker := range []string{"goroutine ", "panic:"} {
		if strings.Contains(stdout, marker) || strings.Contains(stderr, marker) {
			t.Errorf("Go stack trace in output:\nstdout: %s\nstderr: %s", stdout, stderr)
			return
		}
	}
	if exit != 1 {
		t.Errorf("exit %d, want 1 with CNI error %d\nstdout: %s\nstderr: %s", exit, want, stdout, stderr)
		return
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields()
	var e struct {
		CNIVersion string  `json:"cniVersion"`
		Code       *uint   `json:"code"`
		Msg        string  `json:"msg"`
		Details    *string `json:"details"`
	}
	if err := dec.Decode(&e); err != nil {
		t.Errorf("stdout is not a CNI error object: %v\n%s", err, stdout)
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		t.Errorf("stdout holds more than one JSON value:\n%s", stdout)
		return
	}
	switch {
	case e.Code == nil:
		t.Errorf("CNI error without a code:\n%s", stdout)
	case want != 0 && *e.Code != want:
		t.Errorf("code %d, want %d: %s", *e.Code, want, e.Msg)
	case strings.TrimSpace(e.Msg) == "":
		t.Errorf("CNI error with an empty msg:\n%s", stdout)
	default:
		for _, w := range msgHas {
			if !strings.Contains(e.Msg, w) {
				t.Errorf("message %q does not name %q", e.Msg, w)
			}
		}
	}
}

// checkLiveContainer asserts the live container kept its interface and address.
func checkLiveContainer(t *testing.T, live attachment) {
	t.Helper()
	eth0 := ipJSON[[]ipLink](t, live.ns, "addr", "show", "dev", "eth0")
	if len(eth0) != 1 || !slices.Equal(eth0[0].addrs("inet"), []string{"10.15.20.2/24"}) {
		t.Errorf("live container lost its address: %+v", eth0)
	}
}

// settledState waits until the node stops changing on its own (a new bridge
// port's carrier, IPv6 link-local addresses finishing DAD) and returns it.
func settledState(t *testing.T, n *node, conf string) nodeState {
	t.Helper()
	prev := nodeSnapshot(t, n, conf)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(300 * time.Millisecond)
		cur := nodeSnapshot(t, n, conf)
		if len(prev.diff(cur)) == 0 && !strings.Contains(cur.Addrs, "tentative") {
			return cur
		}
		prev = cur
	}
	t.Fatalf("node state does not settle: %+v", prev)
	return prev
}

func nodeSnapshot(t *testing.T, n *node, conf string) nodeState {
	t.Helper()
	res, err := json.Marshal(reservations(t, conf))
	if err != nil {
		t.Fatal(err)
	}
	return nodeState{
		Reservations: string(res),
		Links:        canonicalJSON(t, n.sb.Node.MustRun(t, "ip", "-j", "link", "show")),
		Addrs:        canonicalJSON(t, n.sb.Node.MustRun(t, "ip", "-j", "addr", "show")),
		Ruleset:      canonicalJSON(t, n.sb.Node.MustRun(t, "nft", "-j", "list", "ruleset")),
		StoreFiles:   hashedFiles(t, n.dataDir),
	}
}

// canonicalJSON re-encodes a command's JSON output so formatting does not
// count as a change.
func canonicalJSON(t *testing.T, out string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// hashedFiles lists the files under dir as "relative-path sha256", sorted.
func hashedFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, rel := range storeFiles(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		out = append(out, rel+" "+hex.EncodeToString(sum[:8]))
	}
	sort.Strings(out)
	return out
}

// names drops the hashes from hashedFiles' entries.
func names(files []string) []string {
	out := make([]string, len(files))
	for i, f := range files {
		out[i], _, _ = strings.Cut(f, " ")
	}
	return out
}
