package migrate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/pier-cni/pier/internal/config"
	"github.com/pier-cni/pier/internal/ipam/store"
)

// Action is what migration does, or would do, with one reservation.
type Action string

const (
	Import   Action = "import"   // not in Pier's store yet
	Present  Action = "present"  // already held by the same attachment (migrated before)
	Conflict Action = "conflict" // held by another attachment in Pier's store: an error
	Skip     Action = "skip"     // not importable; Note says why
)

// Item is one host-local reservation and its fate.
type Item struct {
	Addr        netip.Addr `json:"address"`
	ContainerID string     `json:"containerID"`
	IfName      string     `json:"ifname"`
	RangeSet    int        `json:"rangeSet"` // -1 when no range of Pier's config holds it
	Action      Action     `json:"action"`
	Note        string     `json:"note,omitempty"`
	// Error marks a problem that must be solved before the switch: a
	// conflict, or a reservation that cannot be imported although Pier's
	// ranges hold its address (it would be handed out twice).
	Error bool `json:"error,omitempty"`
}

// Options of a migration.
type Options struct {
	// HostLocalDir is host-local's dataDir (holding <network>/).
	HostLocalDir string
	// Target is Pier's IPAM config of the network: its name, range sets and
	// DataDir (where the store is written).
	Target *config.IPAMConfig
	// DefaultIfName is the interface name given to reservations in
	// host-local's old format, which recorded only the container ID.
	DefaultIfName string
	// Apply writes; without it nothing is changed (a dry run).
	Apply bool
}

// Report is the outcome of a migration or a dry run.
type Report struct {
	Network  string   `json:"network"`
	Source   string   `json:"source"`
	Target   string   `json:"target"`
	Applied  bool     `json:"applied"`
	Items    []Item   `json:"items"`
	Problems []string `json:"problems,omitempty"` // unreadable source files
}

// Counts returns the number of items with each action, and of errors.
func (r *Report) Counts() (counts map[Action]int, errs int) {
	counts = map[Action]int{}
	for _, it := range r.Items {
		counts[it.Action]++
		if it.Error {
			errs++
		}
	}
	return counts, errs + len(r.Problems)
}

// Run plans the migration and, with Apply, performs it: every reservation
// of the network not yet in Pier's store is reserved there for its owner.
// Nothing is written when a conflict or an unreadable source file is found;
// the report says which.
func Run(ctx context.Context, opts Options) (*Report, error) {
	conf := opts.Target
	if opts.DefaultIfName == "" {
		opts.DefaultIfName = "eth0"
	}
	hl, err := ReadHostLocal(opts.HostLocalDir, conf.Name)
	if err != nil {
		return nil, err
	}
	rep := &Report{Network: conf.Name, Source: hl.Dir, Target: filepath.Join(conf.DataDir, conf.Name), Items: []Item{}}
	for _, u := range hl.Unreadable {
		rep.Problems = append(rep.Problems, "unreadable host-local file "+u)
	}
	for _, e := range hl.Entries {
		rep.Items = append(rep.Items, classify(conf, e, opts.DefaultIfName))
	}
	if !opts.Apply {
		return rep, dryRun(ctx, conf, rep)
	}
	st, err := store.NewFile(conf.DataDir, conf.Name)
	if err != nil {
		return rep, err
	}
	// One transaction: what was compared is what gets written, whatever
	// ADDs run meanwhile.
	err = st.Update(ctx, func(tx store.Tx) error {
		markHeld(tx, rep)
		if _, errs := rep.Counts(); errs > 0 {
			return nil
		}
		if err := reserve(tx, rep, hl.LastReserved); err != nil {
			return err
		}
		rep.Applied = true
		return nil
	})
	return rep, err
}

// classify decides what an entry would become, before looking at Pier's
// store.
func classify(conf *config.IPAMConfig, e HostLocalEntry, defaultIf string) Item {
	it := Item{Addr: e.Addr, ContainerID: e.ContainerID, IfName: e.IfName, RangeSet: -1, Action: Import}
	if it.IfName == "" {
		it.IfName = defaultIf
		it.Note = fmt.Sprintf("old host-local format without interface name: imported as %s", defaultIf)
	}
	for i, set := range conf.RangeSets {
		if set.Contains(e.Addr) {
			it.RangeSet = i
		}
	}
	if it.RangeSet < 0 {
		it.Action, it.Note = Skip, "outside every range of Pier's config: Pier never hands it out"
		return it
	}
	if err := store.ValidOwner(store.Owner{ContainerID: it.ContainerID, IfName: it.IfName}); err != nil {
		it.Action, it.Error, it.Note = Skip, true, "cannot be recorded in Pier's store: "+err.Error()
	}
	return it
}

// dryRun marks items already held in Pier's store. A store that does not
// exist yet holds nothing; a dry run does not create it.
func dryRun(ctx context.Context, conf *config.IPAMConfig, rep *Report) error {
	if _, err := os.Stat(rep.Target); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	st, err := store.NewFile(conf.DataDir, conf.Name)
	if err != nil {
		return err
	}
	return st.View(ctx, func(tx store.ReadTx) error {
		markHeld(tx, rep)
		return nil
	})
}

// markHeld compares the items to import with Pier's store.
func markHeld(tx store.ReadTx, rep *Report) {
	for i := range rep.Items {
		it := &rep.Items[i]
		if it.Action != Import {
			continue
		}
		owner, held, err := tx.Holder(it.Addr)
		switch {
		case err != nil:
			it.Action, it.Error, it.Note = Conflict, true, "Pier's record of this address is unreadable: "+err.Error()
		case held && owner == (store.Owner{ContainerID: it.ContainerID, IfName: it.IfName}):
			it.Action, it.Note = Present, "already in Pier's store"
		case held:
			it.Action, it.Error, it.Note = Conflict, true, "Pier's store gives it to "+owner.String()
		}
	}
}

// reserve records the items to import, one Reserve per owner (all its
// addresses at once, as an ADD would). Owners holding host-local's last
// reserved address of a range set go last, so Pier's round robin continues
// where host-local's stopped.
func reserve(tx store.Tx, rep *Report, last map[int]netip.Addr) error {
	type group struct {
		owner  store.Owner
		claims []store.Claim
		isLast bool
	}
	var groups []*group
	byOwner := map[store.Owner]*group{}
	for _, it := range rep.Items {
		if it.Action != Import {
			continue
		}
		o := store.Owner{ContainerID: it.ContainerID, IfName: it.IfName}
		g := byOwner[o]
		if g == nil {
			g = &group{owner: o}
			byOwner[o] = g
			groups = append(groups, g)
		}
		g.claims = append(g.claims, store.Claim{Addr: it.Addr, Set: it.RangeSet})
		if a, ok := last[it.RangeSet]; ok && a == it.Addr {
			g.isLast = true
		}
	}
	if len(groups) == 0 {
		return nil
	}
	slices.SortStableFunc(groups, func(a, b *group) int {
		switch {
		case a.isLast == b.isLast:
			return 0
		case a.isLast:
			return 1
		}
		return -1
	})
	for _, g := range groups {
		if err := tx.Reserve(g.owner, g.claims); err != nil {
			return fmt.Errorf("reserve %v for %s: %w", g.claims, g.owner, err)
		}
	}
	return nil
}
