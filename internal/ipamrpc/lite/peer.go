package lite

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// errUntrusted marks a socket served by someone the plugin must not take
// addresses from. Retrying cannot help.
var errUntrusted = errors.New("refusing pierd socket")

// checkServer makes sure the process listening on c is root's (or, for a
// plugin not run as root, its own user's) before anything is sent: a
// process of another user that got to create the socket's path (a
// daemonSocket in a shared directory, a socket left writable) would see
// every container's network and owner, and could hand out addresses that
// are in use. The kernel recorded the listener's credentials when it
// called listen(2) and gives them with SO_PEERCRED: unlike the socket
// file's owner, they cannot change between a check and the connect.
func checkServer(c *net.UnixConn, path string) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("SO_PEERCRED of %s: %w", path, cerr)
	}
	if euid := os.Geteuid(); cred.Uid != 0 && int(cred.Uid) != euid {
		return fmt.Errorf("%w %s: it is served by uid %d (pid %d), not by root, so it could hand out addresses in use; "+
			"start pierd as root, or fix daemonSocket", errUntrusted, path, cred.Uid, cred.Pid)
	}
	return nil
}
