package nat

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// TableName is the nftables table Pier owns, in family inet.
const TableName = "pier"

const (
	// maxBaseLen is the longest network name used verbatim in object names.
	// The kernel accepts 255 bytes, but names are read by people in
	// `nft list ruleset`, so long ones are shortened well before that.
	maxBaseLen = 40
	// shortPrefixLen + 1 + 16 hex digits is the length of a shortened base
	// (48). It exceeds maxBaseLen, so a shortened base can never equal the
	// verbatim name of another network.
	shortPrefixLen = 31
	// maxCommentLen is the longest comment nft accepts on its command line
	// (NFTNL_UDATA_COMMENT_MAXLEN); longer ones are shortened so the ruleset
	// stays loadable with `nft -f`.
	maxCommentLen = 128
)

// ErrInvalid marks errors caused by the caller's arguments (bad network name,
// subnet or address) rather than by the kernel; errors.Is finds it.
var ErrInvalid = errors.New("invalid argument")

// networkNameRE is the CNI network name syntax.
var networkNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// Network is a CNI network whose containers are masqueraded.
type Network struct {
	// Name is the CNI network name; it names the network's nftables objects.
	Name string
	// Subnets are the network's own prefixes: traffic to them is not
	// masqueraded. Host bits are ignored, and so are order and duplicates.
	Subnets []netip.Prefix
}

// spec is a validated network: its object names, its subnets by family in
// canonical order, and the name of the generation chain for those subnets.
type spec struct {
	objects
	v4, v6 []netip.Prefix
	gen    string
}

func newSpec(n Network) (spec, error) {
	if err := validateName(n.Name); err != nil {
		return spec{}, err
	}
	s := spec{objects: objectNames(n.Name)}
	for _, p := range n.Subnets {
		if !p.IsValid() || p.Bits() == 0 || p.Addr().Zone() != "" {
			// A /0 subnet would exempt every destination: nothing would
			// ever be masqueraded, which is never what a user meant.
			return spec{}, fmt.Errorf("network %q: subnet %q: %w", n.Name, p, ErrInvalid)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			s.v4 = append(s.v4, p)
		} else {
			s.v6 = append(s.v6, p)
		}
	}
	s.v4, s.v6 = canonical(s.v4), canonical(s.v6)
	s.gen = s.genChainName()
	return s, nil
}

func canonical(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return slices.Compact(ps)
}

// genChainName names the chain holding the rules for this set of subnets:
// <base>-masq-<8 hex digits of a hash of the subnets>. A change of subnets
// gives a new chain; elements added before keep pointing at the old one.
func (s spec) genChainName() string {
	h := sha256.New()
	for _, p := range slices.Concat(s.v4, s.v6) {
		fmt.Fprintf(h, "%s,", p)
	}
	return s.base + genInfix + hex.EncodeToString(h.Sum(nil)[:4])
}

const genInfix = "-masq-"

// isGenChain reports whether chain is a generation chain of o. No other
// object name of any network has this shape: all end in "-postrouting",
// "-masq4" or "-masq6", none in "-masq-" and 8 hex digits.
func (o objects) isGenChain(chain string) bool {
	rest, ok := strings.CutPrefix(chain, o.base+genInfix)
	if !ok || len(rest) != 8 {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

func validateName(name string) error {
	if !networkNameRE.MatchString(name) {
		return fmt.Errorf("network name %q: must match %s: %w", name, networkNameRE, ErrInvalid)
	}
	return nil
}

// objects names the nftables objects of one network.
type objects struct {
	network string // full CNI network name, for comments
	base    string // network name, shortened if long
	chain   string // base chain
	set4    string // maps, called sets in the API
	set6    string
}

// objectNames derives the object names from a network name. Names longer
// than maxBaseLen are shortened to their first shortPrefixLen bytes, a dash
// and 64 bits of their SHA-256, so the result is deterministic and the full
// name stays readable in the rule and map comments.
func objectNames(network string) objects {
	base := network
	if len(base) > maxBaseLen {
		sum := sha256.Sum256([]byte(network))
		base = base[:shortPrefixLen] + "-" + hex.EncodeToString(sum[:8])
	}
	return objects{
		network: network,
		base:    base,
		chain:   base + "-postrouting",
		set4:    base + "-masq4",
		set6:    base + "-masq6",
	}
}

func (o objects) ruleComment() string {
	return clampComment("pier: masquerade network " + o.network)
}

func (o objects) setComment() string {
	return clampComment("pier: masquerade sources of network " + o.network)
}

// StoredOwner returns the comment AddMasq stores for owner, which is what
// ListMasq reports back: owner escaped for nft (escapeComment), or, when
// that is longer than nft's comment limit, its first bytes followed by "~"
// and a hash of the whole, so two long owners still compare unequal.
// Compare ListMasq owners against StoredOwner(owner), not owner.
func StoredOwner(owner string) string {
	owner = escapeComment(owner)
	if len(owner) <= maxCommentLen {
		return owner
	}
	sum := sha256.Sum256([]byte(owner))
	tail := "~" + hex.EncodeToString(sum[:8])
	return truncateUTF8(owner, maxCommentLen-len(tail)) + tail
}

// escapeComment makes s safe to print inside an nftables comment. nft lists
// a comment between double quotes exactly as stored, and its parser knows
// no escapes, so a '"' ends the string early: the listing of the whole
// node's ruleset then fails to load with `nft -f`, which is how rulesets
// are saved and restored. A '"' is legal in an interface name (the kernel
// refuses only '/', ':' and whitespace, and CNI only those), and so in the
// "<containerID>/<ifname>" owners Pier writes. Control characters (an
// escape sequence would reach the terminal of whoever lists the ruleset)
// and bytes that are not UTF-8 are no better. Each byte of such a
// character becomes %XX,
// and '%' itself %25, so two owners never escape to the same comment.
func escapeComment(s string) string {
	if !slices.ContainsFunc([]byte(s), func(c byte) bool { return needsEscape(c) || c >= utf8.RuneSelf }) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		bad := r == utf8.RuneError && size == 1 ||
			size == 1 && needsEscape(s[i]) ||
			size > 1 && !unicode.IsPrint(r) // C1 controls, odd spaces
		if !bad {
			b.WriteString(s[i : i+size])
		}
		for ; bad && size > 0; size-- {
			fmt.Fprintf(&b, "%%%02X", s[i])
			i++
		}
		i += size
	}
	return b.String()
}

// needsEscape: the single bytes escapeComment rewrites.
func needsEscape(c byte) bool { return c == '"' || c == '%' || c < 0x20 || c == 0x7f }

func validateOwner(owner string) error {
	if strings.ContainsRune(owner, 0) {
		return fmt.Errorf("owner %q contains NUL: %w", owner, ErrInvalid)
	}
	return nil
}

func clampComment(s string) string {
	if len(s) <= maxCommentLen {
		return s
	}
	return truncateUTF8(s, maxCommentLen)
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
