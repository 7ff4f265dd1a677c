package kube

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/pier-cni/pier/internal/routing"
)

// Annotations pierd publishes on its own Node in vxlan mode, for the other
// nodes to program their FDB and neighbour entries.
const (
	// AnnotationVTEP is the underlay address of the node's vxlan device.
	AnnotationVTEP = "pier-cni.github.io/vxlan-vtep"
	// AnnotationVTEPMAC is the MAC of the node's vxlan device.
	AnnotationVTEPMAC = "pier-cni.github.io/vxlan-mac"
)

// Node is what pierd uses of a Node object.
type Node struct {
	Name string
	// PodCIDRs are spec.podCIDRs (spec.podCIDR when the list is empty),
	// host bits cleared, at most one per family, in the object's order.
	PodCIDRs []netip.Prefix
	// InternalIP4 and InternalIP6 are the first InternalIP of each family
	// in status.addresses: host-gw's next hops.
	InternalIP4, InternalIP6 netip.Addr
	// VTEP and VTEPMAC come from the annotations pierd publishes in vxlan
	// mode; unset until the node's pierd has published them. VTEPMAC is
	// always routing.MACFor(VTEP).
	VTEP    netip.Addr
	VTEPMAC net.HardwareAddr
}

// InternalIP returns the node's InternalIP of one family (IPv4 when v4).
func (n *Node) InternalIP(v4 bool) netip.Addr {
	if v4 {
		return n.InternalIP4
	}
	return n.InternalIP6
}

// PodCIDR returns the node's pod range of a family, if it has one.
func (n *Node) PodCIDR(v4 bool) (netip.Prefix, bool) {
	for _, p := range n.PodCIDRs {
		if p.Addr().Is4() == v4 {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// ParseNode reads a Node object. Whatever it cannot use is left out of the
// result and described in the error (one entry per field); the rest is
// usable even when the error is not nil. It never panics, whatever the
// object holds: Node objects are written by many hands.
func ParseNode(obj *corev1.Node) (Node, error) {
	if obj == nil {
		return Node{}, errors.New("no Node object")
	}
	n := Node{Name: obj.Name}
	var errs []error
	cidrs := obj.Spec.PodCIDRs
	if len(cidrs) == 0 && obj.Spec.PodCIDR != "" {
		cidrs = []string{obj.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			errs = append(errs, fmt.Errorf("spec.podCIDRs: %q is not a CIDR", s))
			continue
		}
		p = p.Masked()
		if _, dup := n.PodCIDR(p.Addr().Is4()); dup {
			errs = append(errs, fmt.Errorf("spec.podCIDRs: %s is a second range of one family", p))
			continue
		}
		n.PodCIDRs = append(n.PodCIDRs, p)
	}
	for _, a := range obj.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" {
			errs = append(errs, fmt.Errorf("status.addresses: InternalIP %q is not an IP address", a.Address))
			continue
		}
		ip = ip.Unmap()
		switch {
		case ip.Is4() && !n.InternalIP4.IsValid():
			n.InternalIP4 = ip
		case ip.Is6() && !n.InternalIP6.IsValid():
			n.InternalIP6 = ip
		}
	}
	errs = append(errs, n.parseVTEP(obj.Annotations))
	return n, errors.Join(errs...)
}

// parseVTEP reads the vxlan annotations; both or neither must be usable.
// The MAC must be the one pierd derives from the VTEP address: every
// pierd's device has that MAC, so another one is no pierd's, and a Node
// that could publish any MAC could publish another node's and take the
// traffic the other nodes send to it.
func (n *Node) parseVTEP(ann map[string]string) error {
	v, hasV := ann[AnnotationVTEP]
	m, hasM := ann[AnnotationVTEPMAC]
	if !hasV && !hasM {
		return nil
	}
	ip, err := netip.ParseAddr(v)
	if err != nil || ip.Zone() != "" || !ip.IsGlobalUnicast() && !ip.IsPrivate() {
		return fmt.Errorf("annotation %s: %q is not a unicast address", AnnotationVTEP, v)
	}
	mac, err := net.ParseMAC(m)
	if err != nil || len(mac) != 6 || mac[0]&1 == 1 || slices.Equal(mac, make(net.HardwareAddr, 6)) {
		return fmt.Errorf("annotation %s: %q is not a unicast Ethernet address", AnnotationVTEPMAC, m)
	}
	if want := routing.MACFor(ip.Unmap()); !slices.Equal(mac, want) {
		return fmt.Errorf("annotation %s: %s is not the MAC of VTEP %s (%s)", AnnotationVTEPMAC, mac, ip.Unmap(), want)
	}
	n.VTEP, n.VTEPMAC = ip.Unmap(), mac
	return nil
}

// Equal reports whether n and o route the same.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && slices.Equal(n.PodCIDRs, o.PodCIDRs) && n.InternalIP4 == o.InternalIP4 &&
		n.InternalIP6 == o.InternalIP6 && n.VTEP == o.VTEP && slices.Equal(n.VTEPMAC, o.VTEPMAC)
}
