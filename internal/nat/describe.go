package nat

import (
	"fmt"
	"strings"
)

// Describe renders, in nft syntax, the table content AddMasq installs for n
// with empty maps: it is what `nft list table inet pier` prints in a
// namespace holding only this network, and it is built from the same rule
// values as the netlink messages. An invalid network renders as an nft
// comment naming the problem.
func Describe(n Network) string {
	s, err := newSpec(n)
	if err != nil {
		return fmt.Sprintf("# %v\n", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for _, f := range families {
		m := newMap(s.objects, f)
		fmt.Fprintf(&b, "\tmap %s {\n\t\ttype %s : verdict\n\t\tcomment \"%s\"\n\t}\n\n", m.Name, f.keyType.Name, m.Comment)
	}
	fmt.Fprintf(&b, "\tchain %s {\n", s.chain)
	b.WriteString("\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
	writeRules(&b, s.baseRules())
	fmt.Fprintf(&b, "\t}\n\n\tchain %s {\n", s.gen)
	writeRules(&b, s.genRules())
	b.WriteString("\t}\n}\n")
	return b.String()
}

func writeRules(b *strings.Builder, rules []rule) {
	for _, r := range rules {
		fmt.Fprintf(b, "\t\t%s\n", r)
	}
}
