package config

import (
	"strings"
	"testing"

	"github.com/pier-cni/pier/internal/cnierr"
)

func TestCheckEnv(t *testing.T) {
	for _, tc := range []struct {
		id, ifName string
		ok         bool
		names      string
	}{
		{"abc-123_x.y", "eth0", true, ""},
		{"", "", true, ""}, // missing: left to skel
		{"a/b", "eth0", false, "CNI_CONTAINERID"},
		{strings.Repeat("a", MaxContainerID+1), "eth0", false, "CNI_CONTAINERID"},
		{"abc", "eth0123456789012", false, "CNI_IFNAME"},
		{"abc", "et:h0", false, "CNI_IFNAME"},
	} {
		env := map[string]string{"CNI_CONTAINERID": tc.id, "CNI_IFNAME": tc.ifName}
		err := CheckEnv(func(k string) string { return env[k] })
		if tc.ok != (err == nil) {
			t.Errorf("%q/%q: err %v, want ok=%v", tc.id, tc.ifName, err, tc.ok)
			continue
		}
		if err != nil && (cnierr.CodeOf(err) != cnierr.InvalidEnv || !strings.Contains(err.Error(), tc.names)) {
			t.Errorf("%q/%q: %v (code %d) does not name %s with code 4", tc.id, tc.ifName, err, cnierr.CodeOf(err), tc.names)
		}
	}
}
