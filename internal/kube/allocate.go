package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod range claims (--allocate-pod-cidrs). Every claim is a coordination
// Lease named after its range, created with create-if-absent semantics (a
// second create of the same name fails with AlreadyExists), so of two
// pierds racing for one range exactly one wins and the other moves on;
// only then is the range written into the node's spec.podCIDRs, with the
// Node's resourceVersion as precondition. Optimistic concurrency on the
// Node alone would not do: two nodes are two objects, and both updates
// would succeed with the same range.
//
// A claim names its node (holderIdentity) and is owned by the Node object
// (ownerReferences), so the cluster's garbage collector deletes it with
// the Node and the range becomes free again; a pierd that restarts, or
// whose Node is re-created under the same name, takes its own claims back
// instead of claiming new ranges. Ranges that nodes hold without a claim
// (set by kube-controller-manager or by hand) are never given out either.
//
// The claims live in a namespace of their own, ClaimNamespace, where
// nothing but them lives: pierd's Role there (list, create, update,
// delete Leases) reaches no one else's. A Role cannot be narrowed to
// pierd's Leases by name instead: RBAC cannot limit create by
// resourceNames (the name is not known when the request is authorized),
// and in kube-system the same verbs would let any node's pierd
// credentials take or delete the controller manager's and the scheduler's
// leader election Leases.
const (
	// ClaimNamespace holds the claim Leases (deploy/kubernetes creates it).
	ClaimNamespace = "pier-system"
	// AnnotationPodCIDR on a claim Lease names its range.
	AnnotationPodCIDR = "pier-cni.github.io/pod-cidr"
	claimSelector     = "app.kubernetes.io/managed-by=pierd,app.kubernetes.io/component=pod-cidr"
	// maxPatches bounds the retries of the Node update on conflicts.
	maxPatches = 10
)

// Allocator assigns pod ranges from the cluster CIDRs to a node that has
// none.
type Allocator struct {
	Client *API
	// ClusterCIDRs: at most one per family; a node gets one range of each.
	ClusterCIDRs []netip.Prefix
	// MaskSize4 and MaskSize6 are the ranges' sizes (default /24 and /64,
	// as kube-controller-manager's --node-cidr-mask-size-ipv4/ipv6).
	MaskSize4, MaskSize6 int
	Log                  *slog.Logger
}

func (a *Allocator) maskSize(p netip.Prefix) int {
	if p.Addr().Is4() {
		if a.MaskSize4 == 0 {
			return 24
		}
		return a.MaskSize4
	}
	if a.MaskSize6 == 0 {
		return 64
	}
	return a.MaskSize6
}

// Validate checks the cluster CIDRs and mask sizes.
func (a *Allocator) Validate() error {
	if len(a.ClusterCIDRs) == 0 {
		return errors.New("no cluster CIDR to allocate pod ranges from")
	}
	seen := map[bool]bool{}
	for _, p := range a.ClusterCIDRs {
		if seen[p.Addr().Is4()] {
			return fmt.Errorf("two cluster CIDRs of one family (%v)", a.ClusterCIDRs)
		}
		seen[p.Addr().Is4()] = true
		if m := a.maskSize(p); m < p.Bits() || m > p.Addr().BitLen()-2 {
			return fmt.Errorf("pod range size /%d does not fit cluster CIDR %s", m, p)
		}
	}
	return nil
}

// Assign returns the node's pod ranges: the ones its spec holds, or new
// ones it claims and writes into the spec.
func (a *Allocator) Assign(ctx context.Context, nodeName string) ([]netip.Prefix, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	node, err := a.Client.GetNode(ctx, nodeName)
	if err != nil {
		return nil, fmt.Errorf("get Node %s: %w", nodeName, err)
	}
	for range maxPatches {
		if have, _ := ParseNode(node); len(have.PodCIDRs) > 0 {
			return have.PodCIDRs, nil
		}
		ranges, err := a.claim(ctx, node)
		if err != nil {
			return nil, err
		}
		patched, err := a.patchNode(ctx, node, ranges)
		switch {
		case err == nil:
			a.log().Info("pod ranges assigned", "node", nodeName, "ranges", ranges)
			n, _ := ParseNode(patched)
			return n.PodCIDRs, nil
		case apierrors.IsConflict(err) || apierrors.IsInvalid(err):
			// The Node changed under us (kubelet's status, or someone set
			// its ranges): read it again; the claims stay ours and are
			// taken back by the next round, or dropped if not used.
			if node, err = a.Client.GetNode(ctx, nodeName); err != nil {
				return nil, fmt.Errorf("get Node %s: %w", nodeName, err)
			}
			if have, _ := ParseNode(node); len(have.PodCIDRs) > 0 {
				a.release(ctx, node.Name, have.PodCIDRs)
				return have.PodCIDRs, nil
			}
		default:
			return nil, fmt.Errorf("write the pod ranges of Node %s: %w", nodeName, err)
		}
	}
	return nil, fmt.Errorf("node %s kept changing while its pod ranges were written (%d tries)", nodeName, maxPatches)
}

func (a *Allocator) log() *slog.Logger {
	if a.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return a.Log
}

// claim returns one claimed range per cluster CIDR for node: its own
// claims if it has any, else new ones.
func (a *Allocator) claim(ctx context.Context, node *corev1.Node) ([]netip.Prefix, error) {
	leases, err := a.Client.ListLeases(ctx, claimSelector)
	if err != nil {
		return nil, fmt.Errorf("list pod range claims: %w", err)
	}
	var taken []netip.Prefix
	mine := map[bool]netip.Prefix{}
	for i := range leases.Items {
		l := &leases.Items[i]
		p, err := netip.ParsePrefix(l.Annotations[AnnotationPodCIDR])
		if err != nil {
			a.log().Warn("pod range claim without a readable range: its range stays taken if its name says one", "lease", l.Name)
			if p, ok := prefixFromClaimName(l.Name); ok {
				taken = append(taken, p)
			}
			continue
		}
		taken = append(taken, p)
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == node.Name {
			if a.adopt(ctx, l, node) {
				mine[p.Addr().Is4()] = p
			}
		}
	}
	nodes, err := a.Client.ListNodes(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list Nodes: %w", err)
	}
	for i := range nodes.Items {
		n, _ := ParseNode(&nodes.Items[i])
		taken = append(taken, n.PodCIDRs...)
	}
	var out []netip.Prefix
	for _, cidr := range a.ClusterCIDRs {
		if p, ok := mine[cidr.Addr().Is4()]; ok && cidr.Contains(p.Addr()) {
			out = append(out, p)
			continue
		}
		p, err := a.claimOne(ctx, node, cidr, &taken)
		if err != nil {
			a.release(ctx, node.Name, nil, out...)
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// adopt makes a claim of this node's name owned by this Node object (it
// may be a claim of an earlier Node of the same name): the garbage
// collector would otherwise delete it with the old object while the range
// is in use. It reports whether the claim is the node's.
func (a *Allocator) adopt(ctx context.Context, l *coordinationv1.Lease, node *corev1.Node) bool {
	ref := nodeOwner(node)
	if len(l.OwnerReferences) == 1 && l.OwnerReferences[0].UID == ref.UID {
		return true
	}
	l.OwnerReferences = []metav1.OwnerReference{ref}
	if err := a.Client.UpdateLease(ctx, l); err != nil {
		a.log().Warn("cannot take back a pod range claim", "lease", l.Name, "err", err)
		return false
	}
	return true
}

func nodeOwner(node *corev1.Node) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}
}

// claimOne claims the lowest free range of cidr: every create that loses
// a race adds that range to taken and tries the next.
func (a *Allocator) claimOne(ctx context.Context, node *corev1.Node, cidr netip.Prefix, taken *[]netip.Prefix) (netip.Prefix, error) {
	bits := a.maskSize(cidr)
	for {
		p, ok := firstFree(cidr, bits, *taken)
		if !ok {
			return netip.Prefix{}, fmt.Errorf("cluster CIDR %s has no free /%d pod range left", cidr, bits)
		}
		holder := node.Name
		now := metav1.NewMicroTime(time.Now())
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name: claimName(p), Namespace: ClaimNamespace,
				Labels: map[string]string{
					"app.kubernetes.io/managed-by": "pierd",
					"app.kubernetes.io/component":  "pod-cidr",
				},
				Annotations:     map[string]string{AnnotationPodCIDR: p.String()},
				OwnerReferences: []metav1.OwnerReference{nodeOwner(node)},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, AcquireTime: &now},
		}
		err := a.Client.CreateLease(ctx, l)
		switch {
		case err == nil:
			return p, nil
		case apierrors.IsAlreadyExists(err):
			*taken = append(*taken, p)
		case apierrors.IsNotFound(err):
			return netip.Prefix{}, fmt.Errorf("claim pod range %s: namespace %s, where the claims live, is missing (deploy/kubernetes/pier-kubernetes.yaml creates it): %w", p, ClaimNamespace, err)
		default:
			return netip.Prefix{}, fmt.Errorf("claim pod range %s: %w", p, err)
		}
	}
}

// release deletes node's claims of ranges, except those of keep.
func (a *Allocator) release(ctx context.Context, node string, keep []netip.Prefix, ranges ...netip.Prefix) {
	if ranges == nil {
		leases, err := a.Client.ListLeases(ctx, claimSelector)
		if err != nil {
			a.log().Warn("cannot list pod range claims to drop unused ones", "err", err)
			return
		}
		for _, l := range leases.Items {
			if p, err := netip.ParsePrefix(l.Annotations[AnnotationPodCIDR]); err == nil &&
				l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == node {
				ranges = append(ranges, p)
			}
		}
	}
	for _, p := range ranges {
		if slices.Contains(keep, p) {
			continue
		}
		err := a.Client.DeleteLease(ctx, claimName(p))
		if err != nil && !apierrors.IsNotFound(err) {
			a.log().Warn("cannot drop an unused pod range claim (it stays taken)", "range", p, "err", err)
		}
	}
}

// patchNode writes ranges into the node's spec if the Node is still at
// the resourceVersion read (a merge patch carrying the resourceVersion is
// refused with a conflict otherwise).
func (a *Allocator) patchNode(ctx context.Context, node *corev1.Node, ranges []netip.Prefix) (*corev1.Node, error) {
	cidrs := make([]string, len(ranges))
	for i, p := range ranges {
		cidrs[i] = p.String()
	}
	patch := map[string]any{
		"metadata": map[string]any{"resourceVersion": node.ResourceVersion},
		"spec":     map[string]any{"podCIDR": cidrs[0], "podCIDRs": cidrs},
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return nil, err
	}
	return a.Client.PatchNode(ctx, node.Name, b)
}

// claimName is a Lease name for a range: "pier-pod-cidr-10-244-1-0-24",
// IPv6 addresses written out in full so no two ranges share a name.
func claimName(p netip.Prefix) string {
	a := p.Addr().String()
	if p.Addr().Is6() {
		a = p.Addr().StringExpanded()
	}
	r := strings.NewReplacer(".", "-", ":", "-")
	return "pier-pod-cidr-" + r.Replace(a) + "-" + strconv.Itoa(p.Bits())
}

// prefixFromClaimName is claimName's inverse.
func prefixFromClaimName(name string) (netip.Prefix, bool) {
	s, ok := strings.CutPrefix(name, "pier-pod-cidr-")
	if !ok {
		return netip.Prefix{}, false
	}
	parts := strings.Split(s, "-")
	if len(parts) != 5 && len(parts) != 9 {
		return netip.Prefix{}, false
	}
	sep := "."
	if len(parts) == 9 {
		sep = ":"
	}
	p, err := netip.ParsePrefix(strings.Join(parts[:len(parts)-1], sep) + "/" + parts[len(parts)-1])
	return p, err == nil
}
