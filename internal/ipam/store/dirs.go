package store

// Who can write the store's directories decides where a root plugin can be
// made to write. A user who may create entries in a network's directory
// could plant a symlink (or a hard link) named like a record, a temp file or
// the round-robin hint, and the next ADD would overwrite its target: any
// file on the node. So, before anything is opened:
//
//   - the data directory and the store's own directories (<network>/ and
//     owners/) must be real directories, owned by root or by the user Pier
//     runs as, and not writable by group or others;
//   - every directory above the data directory (but / itself) must be owned
//     by root or by the user Pier runs as, since a directory's owner may
//     chmod it and then rename its entries: the data directory could be
//     swapped for another between this check and the opens. It must not be
//     writable by group or others either, unless it is sticky (like /tmp:
//     there only an entry's owner, or the directory's, may rename or remove
//     it; the entry below is root's, by the same rule, so the data
//     directory cannot be swapped for another). Inside a user namespace
//     (rootless runtimes) directories of users the namespace does not map,
//     root's included, show as the overflow uid (65534) and are refused
//     too: their owner cannot be told from a user who could swap them, so
//     such a dataDir must lie below directories of mapped users.
//
// The directories Pier creates are 0700 and its files 0600: reservations
// are root's business (`ls` and `cat` as root still show everything). The
// files themselves are opened with O_NOFOLLOW, and created with O_EXCL, or
// checked to be single-link regular files before being written in place
// (fileio.go), so a link planted by someone who could write the directory
// anyway (root, or before the mode was fixed) is never followed either.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// PrepareDataDir creates dataDir when missing and checks it and the
// directories above it as NewFile does, for the data directory's other
// users (pierd's own state, cluster mode's queue). It returns dataDir with
// symlinks resolved.
func PrepareDataDir(dataDir string) (string, error) {
	if !filepath.IsAbs(dataDir) {
		return "", fmt.Errorf("IPAM data directory %q must be an absolute path", dataDir)
	}
	dataDir = filepath.Clean(dataDir)
	err := walkDataDir(dataDir)
	if !errors.Is(err, errLinkInPath) {
		return dataDir, err
	}
	// Rare: a symlink on the way (say /var/lib/cni -> /data/cni). Walk the
	// resolved path instead, and use it from now on, so that a link
	// repointed later does not redirect this call.
	resolved, err := resolveExisting(dataDir)
	if err == nil {
		err = walkDataDir(resolved)
	}
	if err != nil {
		return "", fmt.Errorf("IPAM data directory %s: %w", dataDir, err)
	}
	return resolved, nil
}

// resolveExisting resolves the symlinks of the longest part of p that
// exists, and keeps the rest (to be created) as it is.
func resolveExisting(p string) (string, error) {
	rest := ""
	for {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) || p == "/" {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = filepath.Dir(p)
	}
}

// prepareDirs creates what is missing of dataDir/network/owners and checks
// every directory on the way (see the file comment). It returns the
// network's directory, with symlinks above it resolved.
func prepareDirs(dataDir, network string) (string, error) {
	root, err := PrepareDataDir(dataDir)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, network)
	for _, d := range []string{dir, filepath.Join(dir, ownersDir)} {
		fi, err := lstatOrMkdir(d, dirMode)
		if err == nil {
			err = checkOwnDir(d, fi, "IPAM store directory")
		}
		if err != nil {
			return "", err
		}
	}
	return dir, nil
}

// errLinkInPath: walkDataDir met a symlink.
var errLinkInPath = errors.New("symbolic link in the path")

// walkDataDir checks each directory from the top down to dataDir, one
// lstat each (this runs at every plugin call), creating what is missing:
// parents 0755, dataDir itself 0700.
func walkDataDir(dataDir string) error {
	p := ""
	parts := strings.Split(strings.TrimPrefix(dataDir, "/"), "/")
	for i, part := range parts {
		p += "/" + part
		last := i == len(parts)-1
		mode := os.FileMode(0o755)
		if last {
			mode = dirMode
		}
		fi, err := lstatOrMkdir(p, mode)
		switch {
		case err != nil:
			return fmt.Errorf("IPAM data directory %s: %w", dataDir, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return errLinkInPath
		case last:
			return checkOwnDir(p, fi, "IPAM data directory")
		}
		if err := checkAncestor(p, fi, dataDir); err != nil {
			return err
		}
	}
	return nil
}

// lstatOrMkdir returns dir's lstat, creating it with mode first when it is
// missing (a concurrent creator is fine: what exists is checked next).
func lstatOrMkdir(dir string, mode os.FileMode) (fs.FileInfo, error) {
	fi, err := os.Lstat(dir)
	if !errors.Is(err, fs.ErrNotExist) {
		return fi, err
	}
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create IPAM store: %w", err)
	}
	return os.Lstat(dir)
}

// checkOwnDir checks a directory Pier writes in: a real directory, owned by
// root or Pier's user, not writable by group or others.
func checkOwnDir(dir string, fi fs.FileInfo, what string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	euid := os.Geteuid()
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s %s is a symbolic link; Pier does not follow links inside its data directory: replace it with a directory", what, dir)
	case !fi.IsDir():
		return fmt.Errorf("%s %s is not a directory", what, dir)
	case !ok:
		return fmt.Errorf("%s %s: cannot read its owner", what, dir)
	case st.Uid != 0 && int(st.Uid) != euid:
		return fmt.Errorf("%s %s is owned by uid %d, so that user could make Pier overwrite any file: "+
			"it must belong to root (or to uid %d, which Pier runs as); fix: chown %d %s", what, dir, st.Uid, euid, euid, dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("%s %s is writable by group or others (mode %04o), so they could make Pier overwrite any file; "+
			"fix: chmod go-w %s", what, dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// checkAncestor refuses a directory above the data directory whose owner
// is not root or Pier's user, or that others may write to without the
// sticky bit: they could rename the data directory away and put their own
// in its place.
func checkAncestor(p string, fi fs.FileInfo, dataDir string) error {
	if !fi.IsDir() {
		return fmt.Errorf("IPAM data directory %s: %s is not a directory", dataDir, p)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	euid := os.Geteuid()
	switch {
	case !ok:
		return fmt.Errorf("IPAM data directory %s: cannot read the owner of %s", dataDir, p)
	case st.Uid != 0 && int(st.Uid) != euid:
		return fmt.Errorf("%s, above the IPAM data directory %s, is owned by uid %d, who could swap the data directory for their own; "+
			"fix: chown 0 %s, or choose a dataDir under directories of root (or of uid %d, which Pier runs as)",
			p, dataDir, st.Uid, p, euid)
	case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0:
		return fmt.Errorf("%s, above the IPAM data directory %s, is writable by group or others (mode %04o) and not sticky, "+
			"so they could swap the data directory for their own; fix: chmod go-w %s, or choose a dataDir under a directory only root writes",
			p, dataDir, fi.Mode().Perm(), p)
	}
	return nil
}
