package testnet

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// WaitForLockWaiter polls /proc/locks until a process is blocked on a lock
// of the file at path (a "->" line naming its inode), and reports true; or
// until stop reports true (what was to wait finished, or failed, without
// waiting), and reports false. Tests use it to see that a call waits for a
// lock without timing it.
func WaitForLockWaiter(path string, stop func() bool) (bool, error) {
	return WaitForLockWaiters(path, 1, stop)
}

// WaitForLockWaiters is WaitForLockWaiter for n waiters at once (flock
// waiters of one process count one each: every open of the file is a lock
// of its own).
func WaitForLockWaiters(path string, n int, stop func() bool) (bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return false, err
	}
	ino := fmt.Sprintf(":%d ", st.Sys().(*syscall.Stat_t).Ino)
	for !stop() {
		locks, err := os.ReadFile("/proc/locks")
		if err != nil {
			return false, err
		}
		waiting := 0
		for _, l := range strings.Split(string(locks), "\n") {
			if strings.Contains(l, "->") && strings.Contains(l, ino) {
				waiting++
			}
		}
		if waiting >= n {
			return true, nil
		}
		time.Sleep(time.Millisecond) // a poll interval, not a deadline
	}
	return false, nil
}
