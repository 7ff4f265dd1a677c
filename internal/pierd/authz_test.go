package pierd

import (
	"os"
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/ipamrpc/ipamv1"
)

func TestAccessCheck(t *testing.T) {
	a, err := newAccess([]Grant{{UID: 1000, Networks: []string{"a", "b"}}, {UID: 1001, Networks: []string{"c"}}, {UID: 1000, Networks: []string{"d"}}})
	if err != nil {
		t.Fatal(err)
	}
	net := func(name string) *ipamv1.Network { return &ipamv1.Network{Name: name} }
	cases := []struct {
		uid  int
		req  any
		want string // "" allowed, else part of the refusal
	}{
		{1000, &ipamv1.AllocateRequest{Network: net("a")}, ""},
		{1000, &ipamv1.ReleaseRequest{Network: net("d")}, ""}, // grants of one uid add up
		{1000, &ipamv1.GCRequest{Network: net("c")}, `may not use network "c"`},
		{1001, &ipamv1.CheckRequest{Network: net("c")}, ""},
		{1001, &ipamv1.StatusRequest{Network: net("a")}, `only ["c"]`},
		{1001, &ipamv1.StatusRequest{}, "calls about every network are root's"},
		{1000, &ipamv1.ListRequest{Network: "b"}, ""},
		{1000, &ipamv1.ListRequest{}, "calls about every network are root's"},
		{1000, &ipamv1.AllocateRequest{}, "calls about every network"},
		{1000, "a request of a method added later", "calls about every network"},
		{1002, &ipamv1.AllocateRequest{Network: net("a")}, "refuses uid 1002"},
	}
	for _, tc := range cases {
		err := a.check(tc.uid, tc.req)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("uid %d, %T %v: %v; want %q", tc.uid, tc.req, tc.req, err, tc.want)
		}
	}
	for _, uid := range []int{0, os.Geteuid()} {
		if !a.trusted(uid) || !a.allowed(uid) {
			t.Errorf("uid %d is not trusted", uid)
		}
	}
	if a.allowed(1002) || !a.allowed(1001) || !a.shared() {
		t.Error("allowed/shared wrong")
	}
}

func TestNewAccessRefusals(t *testing.T) {
	for _, g := range [][]Grant{
		{{UID: 0, Networks: []string{"a"}}},
		{{UID: os.Geteuid(), Networks: []string{"a"}}},
		{{UID: 1000}},
		{{UID: 1000, Networks: []string{"../x"}}},
		{{UID: -1, Networks: []string{"a"}}},
	} {
		if _, err := newAccess(g); err == nil {
			t.Errorf("newAccess(%+v) accepted it", g)
		}
	}
}
