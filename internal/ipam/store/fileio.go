package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// tempName is where name is staged. One writer at a time holds the lock, so a
// fixed name suffices; one left by a crash is overwritten or swept.
func tempName(dir, name string) string { return filepath.Join(dir, "."+name+".tmp") }

// replaceFile atomically replaces dir/name with data: temp file, fsync when
// sync (or the store is durable), rename.
func (t *fileTx) replaceFile(dir, name string, data []byte, sync bool) error {
	tmp := tempName(dir, name)
	if err := writeTemp(tmp, data, sync || t.durable); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", name, err), os.Remove(tmp))
	}
	t.dirty[dir] = true
	return nil
}

// writeTemp writes data to a new file at path: O_EXCL, so it is always a
// fresh inode of ours, never a file someone linked there. A temp file left
// by a crash is removed first (unlink does not follow links).
func writeTemp(path string, data []byte, sync bool) error {
	f, err := createExcl(path)
	if errors.Is(err, os.ErrExist) {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("remove stale temp file: %w", rerr)
		}
		f, err = createExcl(path)
	}
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", path, err), os.Remove(path))
	}
	return nil
}

func createExcl(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, fileMode)
}

// maxFileSize bounds what reading one record, index or hint may allocate;
// real ones are a few hundred bytes.
const maxFileSize = 1 << 20

// errNotRegular: a store file is a symlink, a FIFO, a device or a
// directory. Pier creates only regular files, so someone else made it.
var errNotRegular = errors.New("not a regular file (Pier does not follow links in its store)")

// readRegular reads a store file without following a symlink, and without
// blocking on a FIFO or reading a device planted under a store name.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s: %w", path, errNotRegular)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read-only: nothing to flush
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w", path, errNotRegular)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err == nil && len(b) > maxFileSize {
		err = fmt.Errorf("%s is larger than %d bytes", path, maxFileSize)
	}
	return b, err
}

// hintWidth is the fixed size of a hint file: the longest address text (39
// bytes of IPv6) and a newline. A fixed size lets a hint be rewritten in
// place without truncating, which on ext4 frees and reallocates a block
// (hundreds of µs on the reference VM).
const hintWidth = 40

// writeHint rewrites a round-robin hint in place, space-padded. A hint cut
// short by a crash only fails to parse, which restarts the rotation. What
// is at the hint's name must be Pier's own single-link regular file (an
// in-place write through a planted hard link would change its other
// names); anything else is replaced by a new file.
func writeHint(path, addr string) error {
	f, err := openHint(path)
	if err != nil {
		return err
	}
	buf := []byte(addr + "\n" + strings.Repeat(" ", max(0, hintWidth-len(addr)-1)))
	_, err = f.WriteAt(buf, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func openHint(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return createExcl(path)
	}
	if err == nil {
		var st unix.Stat_t
		if err = unix.Fstat(int(f.Fd()), &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink == 1 {
			return f, nil
		}
		_ = f.Close() // not ours to write: replaced below
	}
	if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return nil, errors.Join(err, rerr)
	}
	return createExcl(path)
}

// link makes dir/name a new name of src; ErrTaken when the name exists.
func (t *fileTx) link(src, dir, name string) error {
	err := os.Link(src, filepath.Join(dir, name))
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s: %w", name, ErrTaken)
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	t.dirty[dir] = true
	return nil
}

// remove deletes dir/name; an absent file is already removed.
func (t *fileTx) remove(dir, name string) error {
	err := os.Remove(filepath.Join(dir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	t.dirty[dir] = true
	return nil
}

// syncDirs is an ordering point of a durable store: every rename, link and
// removal so far survives a power cut before any later one does. Without
// durability it does nothing (see the package's durability notes).
func (t *fileTx) syncDirs() error {
	if !t.durable {
		return nil
	}
	return t.flushDirs()
}

// flushDirs fsyncs every directory changed since the last flush.
func (t *fileTx) flushDirs() error {
	var errs []error
	for dir := range t.dirty {
		errs = append(errs, syncDir(dir))
		delete(t.dirty, dir)
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s for fsync: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
