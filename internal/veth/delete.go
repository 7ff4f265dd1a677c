package veth

import "github.com/pier-cni/pier/internal/links"

// DeleteHostEnd deletes the host end of a pair by name, which removes the
// container end too. A missing link is not an error: rollback and GC call
// it for links that may be gone already.
func DeleteHostEnd(name string) error {
	return links.Delete(name)
}
