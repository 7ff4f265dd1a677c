package kube

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// API is the part of the Kubernetes API pierd uses: Nodes, for pod range
// claims Leases in ClaimNamespace, and for network policy (pierd
// --network-policy) Pods, Namespaces and NetworkPolicies, read only.
//
// Why not client-go's clientset: its package (and its informer factory)
// imports every API group, whose init functions register hundreds of types
// at start; pierd would carry ~9 MiB more resident memory for types it
// never reads. Two REST clients over a scheme of the two groups it does
// read cost a fraction of that, and speak protobuf all the same.
type API struct {
	core, coord, networking rest.Interface
}

// scheme knows the types pierd reads and writes.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, coordinationv1.AddToScheme, networkingv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err) // static registrations: a failure is a build defect
		}
	}
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	return s
}()

var codecs = serializer.NewCodecFactory(scheme)

// NewAPI connects to the API server of cfg (see Connect).
func NewAPI(cfg *rest.Config) (*API, error) {
	core, err := restFor(cfg, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	coord, err := restFor(cfg, "/apis", coordinationv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	networking, err := restFor(cfg, "/apis", networkingv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &API{core: core, coord: coord, networking: networking}, nil
}

func restFor(cfg *rest.Config, path string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath, c.GroupVersion = path, &gv
	c.NegotiatedSerializer = codecs.WithoutConversion()
	if c.ContentType == "" {
		c.ContentType = runtime.ContentTypeJSON
	}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}

var paramCodec = runtime.NewParameterCodec(scheme)

// GetNode reads one Node.
func (a *API) GetNode(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := a.core.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
	return n, err
}

// ListNodes lists the Nodes.
func (a *API) ListNodes(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	l := &corev1.NodeList{}
	err := a.core.Get().Resource("nodes").VersionedParams(&opts, paramCodec).Do(ctx).Into(l)
	return l, err
}

// WatchNodes watches the Nodes.
func (a *API) WatchNodes(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return a.core.Get().Resource("nodes").VersionedParams(&opts, paramCodec).Watch(ctx)
}

// PatchNode applies a merge patch to a Node.
func (a *API) PatchNode(ctx context.Context, name string, patch []byte) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := a.core.Patch(types.MergePatchType).Resource("nodes").Name(name).Body(patch).Do(ctx).Into(n)
	return n, err
}

// ListLeases lists the Leases of ClaimNamespace that selector selects.
func (a *API) ListLeases(ctx context.Context, selector string) (*coordinationv1.LeaseList, error) {
	l := &coordinationv1.LeaseList{}
	opts := metav1.ListOptions{LabelSelector: selector}
	err := a.coord.Get().Namespace(ClaimNamespace).Resource("leases").VersionedParams(&opts, paramCodec).Do(ctx).Into(l)
	return l, err
}

// CreateLease creates a Lease in ClaimNamespace; an existing one of the
// name fails with AlreadyExists.
func (a *API) CreateLease(ctx context.Context, l *coordinationv1.Lease) error {
	return a.coord.Post().Namespace(ClaimNamespace).Resource("leases").Body(l).Do(ctx).Error()
}

// UpdateLease replaces a Lease if its resourceVersion is still current.
func (a *API) UpdateLease(ctx context.Context, l *coordinationv1.Lease) error {
	return a.coord.Put().Namespace(ClaimNamespace).Resource("leases").Name(l.Name).Body(l).Do(ctx).Error()
}

// DeleteLease deletes a Lease of ClaimNamespace.
func (a *API) DeleteLease(ctx context.Context, name string) error {
	return a.coord.Delete().Namespace(ClaimNamespace).Resource("leases").Name(name).Do(ctx).Error()
}

// NodeInformer is an informer on every Node, whose cache keeps only what
// networking reads (trimNode). No periodic resync: the route agent
// reconciles on its own timer.
func (a *API) NodeInformer() cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return a.ListNodes(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return a.WatchNodes(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, time.Duration(0), cache.Indexers{})
	if err := inf.SetTransform(trim); err != nil {
		panic(fmt.Sprintf("transform on a new informer: %v", err)) // only refused once started
	}
	return inf
}

// PolicyInformers are informers on every Pod, Namespace and NetworkPolicy
// of the cluster, not started: network policy's feed (netpol.Watch, which
// runs them and trims the Pods it caches). No periodic resync: the engine
// keeps its own state and repairs the kernel on its own timer.
func (a *API) PolicyInformers() (pods, namespaces, policies cache.SharedIndexInformer) {
	return listWatchInformer(a.core, "pods", &corev1.Pod{}, func() runtime.Object { return &corev1.PodList{} }),
		listWatchInformer(a.core, "namespaces", &corev1.Namespace{}, func() runtime.Object { return &corev1.NamespaceList{} }),
		listWatchInformer(a.networking, "networkpolicies", &networkingv1.NetworkPolicy{}, func() runtime.Object { return &networkingv1.NetworkPolicyList{} })
}

// listWatchInformer is an informer on every object of resource (of every
// namespace) through c.
func listWatchInformer(c rest.Interface, resource string, obj runtime.Object, newList func() runtime.Object) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l := newList()
			err := c.Get().Resource(resource).VersionedParams(&o, paramCodec).Do(ctx).Into(l)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.Watch = true
			return c.Get().Resource(resource).VersionedParams(&o, paramCodec).Watch(ctx)
		},
	}
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
}
