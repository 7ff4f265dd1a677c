package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/pier-cni/pier/internal/pierd"
)

// accessFlags are who may call pierd besides root, about which networks,
// and how many connections each may hold.
type accessFlags struct {
	grants           grantsFlag
	maxConns, perUID *int
}

func addAccessFlags(fs *flag.FlagSet) *accessFlags {
	a := &accessFlags{}
	fs.Var(&a.grants, "allow-uid", "UID=NETWORK[,NETWORK…]: let a uid other than root call about these networks only (repeatable)")
	a.maxConns = fs.Int("max-conns", pierd.DefaultMaxConns, "connections pierd holds at most; users other than root share half of them")
	a.perUID = fs.Int("max-conns-per-uid", pierd.DefaultMaxConnsPerUID, "connections each uid other than root holds at most")
	return a
}

func (a *accessFlags) limits() (pierd.ConnLimits, error) {
	if *a.maxConns < 2 || *a.perUID < 1 {
		return pierd.ConnLimits{}, fmt.Errorf("--max-conns must be at least 2 and --max-conns-per-uid at least 1")
	}
	return pierd.ConnLimits{Total: *a.maxConns, PerUID: *a.perUID}, nil
}

// grantsFlag collects --allow-uid values.
type grantsFlag []pierd.Grant

func (g *grantsFlag) String() string { return fmt.Sprint([]pierd.Grant(*g)) }

// Set parses "UID=NETWORK[,NETWORK…]". A bare uid, the form of earlier
// versions (which let it use every network), is refused with the new form
// in the message, so an upgrade never widens or silently narrows access.
func (g *grantsFlag) Set(v string) error {
	uidText, nets, ok := strings.Cut(v, "=")
	uid, err := strconv.Atoi(strings.TrimSpace(uidText))
	if err != nil || uid < 0 {
		return fmt.Errorf("%q is not UID=NETWORK[,NETWORK…]: %q is not a uid", v, uidText)
	}
	if !ok || strings.TrimSpace(nets) == "" {
		return fmt.Errorf("%q: name the networks uid %d may use, as %d=NETWORK[,NETWORK…]", v, uid, uid)
	}
	grant := pierd.Grant{UID: uid}
	for _, n := range strings.Split(nets, ",") {
		if n = strings.TrimSpace(n); n != "" {
			grant.Networks = append(grant.Networks, n)
		}
	}
	*g = append(*g, grant)
	return nil
}
