package plugin

import (
	"fmt"
	"log/slog"
)

// undoStack collects the undo of every step an ADD has completed. When a later
// step fails, run undoes them in reverse order, so a failed ADD leaves no
// half-built state: no veth, no reservation, no set element. The reference
// leaves a failed ADD's veth for the runtime's DEL; a runtime that never
// sends it (or a crash of the runtime) would leak it.
type undoStack struct {
	steps []undoStep
}

type undoStep struct {
	what string
	undo func() error
}

func (s *undoStack) push(what string, undo func() error) {
	s.steps = append(s.steps, undoStep{what, undo})
}

// run undoes the steps newest first and stops at the first undo that fails:
// the older steps are what the failed one depends on (an address must stay
// reserved while a veth or a masquerade element still uses it, or it could
// be handed to another container). What is left is a consistent, smaller
// attachment that the DEL the runtime sends after a failed ADD removes.
func (s *undoStack) run(log *slog.Logger) error {
	defer func() { s.steps = nil }()
	for i := len(s.steps) - 1; i >= 0; i-- {
		st := s.steps[i]
		if err := st.undo(); err != nil {
			log.Error("rollback step failed; older steps kept for DEL", "step", st.what, "err", err)
			return fmt.Errorf("%s: %w", st.what, err)
		}
		log.Debug("rolled back", "step", st.what)
	}
	return nil
}
