package inspect

import (
	"fmt"
	"io"
	"strings"

	"github.com/pier-cni/pier/internal/netpol/dataplane"
)

// textWriter writes "label  value" lines, each followed by its reason.
type textWriter struct {
	w   io.Writer
	err error
}

func (t *textWriter) printf(format string, a ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, a...)
	}
}

// item prints one piece and, indented under it, why it is there.
func (t *textWriter) item(indent, label, value, why string) {
	t.printf("%s%-12s %s\n", indent, label, value)
	if why != "" {
		t.printf("%s%12s   why: %s\n", indent, "", why)
	}
}

// WriteText renders an attachment for people.
func WriteText(w io.Writer, a *Attachment) error {
	t := &textWriter{w: w}
	t.printf("attachment %s/%s of network %s", a.ContainerID, a.IfName, a.Network)
	if len(a.OtherPlugins) > 0 {
		t.printf(" (plugin %s, not Pier's)", strings.Join(a.OtherPlugins, ", "))
	}
	t.printf("\n")
	t.printf("  found in: %s", strings.Join(a.FoundIn, ", "))
	if a.ConfigFrom != "" {
		t.printf("; config from %s", a.ConfigFrom)
	}
	t.printf("\n")
	if a.NetNS != "" {
		t.printf("  netns: %s\n", a.NetNS)
	}
	if b := a.Bridge; b != nil {
		t.printf("\nnode\n")
		t.item("  ", "bridge", fmt.Sprintf("%s (index %d, %s, mtu %d)", b.Name, b.Index, upDown(b.Up), b.MTU), b.Why)
		for _, g := range b.Gateways {
			t.item("  ", "gateway", g.Value, g.Why)
		}
		for _, f := range b.Forwarding {
			t.item("  ", "forwarding", f.Value, f.Why)
		}
		t.bridgeSetup(b)
	} else if a.HostVeth != nil {
		t.printf("\nnode\n")
	}
	if h := a.HostVeth; h != nil {
		t.item("  ", "host veth", fmt.Sprintf("%s (index %d, peer index %d, master %s, hairpin %s, mtu %d, alias %q)",
			h.Name, h.Index, h.PeerIndex, dash(h.Master), onOff(h.Hairpin), h.MTU, h.Alias), h.Why)
	}
	for _, m := range a.Masquerade {
		t.item("  ", "masquerade", fmt.Sprintf("%s in map %s, comment %q", m.Addr, m.Map, m.Owner), m.Why)
	}
	if p := a.NetworkPolicy; p != nil {
		pod := p.Pod
		if pod == "" {
			pod = "not classified yet (dropped until pierd knows the pod)"
		}
		t.item("  ", "policy", fmt.Sprintf("pod %s; ingress %s; egress %s", pod, policyDir(p.Ingress), policyDir(p.Egress)), p.Why)
	}
	if s := a.SourceCheck; s != nil {
		t.item("  ", "sources", s.Value, s.Why)
	}
	for _, p := range a.PortMappings {
		v := fmt.Sprintf("host %d -> container %d/%s", p.HostPort, p.ContainerPort, p.Protocol)
		if p.HostIP != "" {
			v += " on " + p.HostIP
		}
		t.item("  ", "port", v, p.Why)
	}
	if b := a.Bandwidth; b != nil {
		t.item("  ", "bandwidth", bandwidthText(b), b.Why)
	}
	if i := a.Interface; i != nil || len(a.Addresses) > 0 || len(a.Routes) > 0 {
		t.printf("\ncontainer\n")
	}
	if i := a.Interface; i != nil {
		t.item("  ", "interface", fmt.Sprintf("%s (index %d, peer index %d, mac %s, mtu %d)", i.Name, i.Index, i.PeerIndex, i.MAC, i.MTU), i.Why)
	}
	for _, ad := range a.Addresses {
		t.item("  ", "address", ad.Value, ad.Why)
	}
	for _, r := range a.Routes {
		v := r.Dst
		if r.Gw != "" {
			v += " via " + r.Gw
		}
		t.item("  ", "route", v, r.Why)
	}
	if len(a.Reservations) > 0 {
		t.printf("\nipam\n")
	}
	for _, r := range a.Reservations {
		t.item("  ", "reservation", r.Addr, r.Why)
	}
	writeNotes(t, a.Notes, a.Problems)
	return t.err
}

func writeNotes(t *textWriter, notes, problems []string) {
	if len(notes)+len(problems) > 0 {
		t.printf("\n")
	}
	for _, n := range notes {
		t.printf("note: %s\n", n)
	}
	for _, p := range problems {
		t.printf("problem: %s\n", p)
	}
}

// WriteNetworkText renders a network summary for people.
func WriteNetworkText(w io.Writer, n *Network) error {
	t := &textWriter{w: w}
	t.printf("network %s (config %s)\n", n.Network, dash(n.ConfigFrom))
	if len(n.Settings) > 0 {
		t.printf("\nsettings\n")
	}
	for _, s := range n.Settings {
		t.printf("  %-28s %s\n", s.Value, s.Why)
	}
	if b := n.Bridge; b != nil {
		t.printf("\nnode\n")
		t.item("  ", "bridge", fmt.Sprintf("%s (index %d, %s, mtu %d)", b.Name, b.Index, upDown(b.Up), b.MTU), b.Why)
		for _, g := range b.Gateways {
			t.item("  ", "gateway", g.Value, g.Why)
		}
		t.bridgeSetup(b)
	}
	t.printf("\nattachments (%d)\n", len(n.Attachments))
	for _, m := range n.Attachments {
		t.printf("  %s/%s  veth %s  reserved %s  masquerade %s  cached %s\n", m.ContainerID, m.IfName, dash(m.HostVeth),
			dash(strings.Join(m.Reserved, ",")), dash(strings.Join(m.Masquerade, ",")), yesNo(m.Cached))
		t.printf("      %s\n", m.State)
	}
	if n.Pool != nil {
		t.printf("\n")
		p := n.Pool
		t.printf("pool (store %s)\n", p.Store)
		for _, r := range p.Ranges {
			t.printf("  range set %d: %s-%s of %s, gateway %s: %d used, %s free of %s\n", r.RangeSet, r.Start, r.End, r.Subnet, r.Gateway,
				r.Used, sizeText(r.Free()), sizeText(r.Size))
		}
		if !p.Ready {
			t.printf("  an ADD cannot be served: %s\n", p.Reason)
		}
	}
	if r := n.Rules; r != nil {
		t.printf("\nmasquerade rules (table inet pier, %d element(s) in the maps)\n", r.Elements)
		t.printf("  why: %s\n", r.Why)
		t.printf("%s", indentText(r.Listing, "    "))
	}
	writeNotes(t, n.Notes, n.Problems)
	return t.err
}

func sizeText(n uint64) string {
	if n == ^uint64(0) {
		return ">=2^64"
	}
	return fmt.Sprint(n)
}

func bandwidthText(b *Bandwidth) string {
	var parts []string
	for _, k := range []string{"ingressRate", "ingressBurst", "egressRate", "egressBurst"} {
		if v, ok := b.Requested[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if b.Qdisc != "" {
		parts = append(parts, b.Qdisc)
	}
	return strings.Join(parts, "; ")
}

func indentText(s, indent string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = indent + strings.ReplaceAll(l, "\t", "  ")
	}
	return strings.Join(lines, "\n") + "\n"
}

func upDown(b bool) string {
	if b {
		return "up"
	}
	return "down"
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// bridgeSetup prints the bridge's MTU reason and node-side setup.
func (t *textWriter) bridgeSetup(b *Bridge) {
	if b.MTUWhy != "" {
		t.item("  ", "mtu", fmt.Sprint(b.MTU), b.MTUWhy)
	}
	for _, s := range b.Setup {
		t.item("  ", "setup", s.Value, s.Why)
	}
}

func policyDir(d dataplane.DirView) string {
	if d.State == "isolated" {
		return "isolated by " + strings.Join(d.Policies, ", ")
	}
	return d.State
}
