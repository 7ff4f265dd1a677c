package plugin

import (
	"errors"
	"fmt"
	"log/slog"
)

// undoStack collects the undo of every step an ADD has completed. When a later
// step fails, run undoes them in reverse order, so a failed ADD leaves no
// half-built state: no veth, no reservation, no set element (STYLE §3).
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

// run undoes every step, newest first, continuing past failures; the joined
// failures are logged and returned so the caller can mention them.
func (s *undoStack) run(log *slog.Logger) error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		st := s.steps[i]
		if err := st.undo(); err != nil {
			log.Error("rollback step failed", "step", st.what, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", st.what, err))
			continue
		}
		log.Debug("rolled back", "step", st.what)
	}
	s.steps = nil
	return errors.Join(errs...)
}
