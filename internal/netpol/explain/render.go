package explain

import (
	"fmt"
	"strings"
)

// Render is the report for people: each base chain with the rules that
// decided, then the verdict and what this node cannot see.
func Render(r Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "flow %s (a new connection; replies of allowed ones always pass)\n", r.Flow)
	for _, c := range r.Checks {
		fmt.Fprintf(&b, "  %s hook, chain %s: %s\n", r.Hook, c.Chain, c.Verdict)
		for _, s := range c.Steps {
			line := fmt.Sprintf("    %s[%d]: %s", s.Chain, s.Rule, s.Action)
			if s.Comment != "" {
				line += fmt.Sprintf("   (%s)", s.Comment)
			}
			b.WriteString(line + "\n")
		}
		if len(c.Steps) == 0 {
			b.WriteString("    no rule decided: the chain's policy accepts\n")
		}
	}
	verdict := "ALLOWED on this node"
	if !r.Allowed {
		verdict = "DROPPED on this node"
	}
	fmt.Fprintf(&b, "  => %s\n", verdict)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	return b.String()
}
