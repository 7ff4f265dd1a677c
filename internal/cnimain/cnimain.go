// Package cnimain is the entry point shared by Pier's plugin binaries: it
// checks the CNI_* variables with messages that name them, then hands the
// verbs to the CNI library's skel, which reads the environment and stdin,
// checks versions and prints the result or the error.
package cnimain

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/pier-cni/pier/internal/cnierr"
	"github.com/pier-cni/pier/internal/config"
)

// Run serves one CNI call and exits.
func Run(funcs skel.CNIFuncs, about string) {
	if err := config.CheckEnv(os.Getenv); err != nil {
		_ = cnierr.ToCNI(err).Print() // stdout gone: the exit status still tells the runtime
		os.Exit(1)
	}
	skel.PluginMainFuncs(funcs, version.All, about)
}
