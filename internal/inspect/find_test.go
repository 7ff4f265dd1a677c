package inspect

import "testing"

func TestParseAlias(t *testing.T) {
	cases := []struct {
		alias, net, cid, ifName string
		ok                      bool
	}{
		{"pier:mybridge:abc123:eth0", "mybridge", "abc123", "eth0", true},
		{"pier:n.1:c-2:net1", "n.1", "c-2", "net1", true},
		{"pier:mybridge:abc123", "", "", "", false},
		{"pier::abc:eth0", "", "", "", false},
		{"other:mybridge:abc:eth0", "", "", "", false},
		{"", "", "", "", false},
	}
	for _, c := range cases {
		n, cid, ifn, ok := parseAlias(c.alias)
		if ok != c.ok || n != c.net || cid != c.cid || ifn != c.ifName {
			t.Errorf("%q: %q %q %q %v", c.alias, n, cid, ifn, ok)
		}
	}
}
