package config

import (
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/pier-cni/pier/internal/cnierr"
)

// CheckEnv checks CNI_CONTAINERID and CNI_IFNAME, when set, before skel
// does: with the same rules (the CNI library's), but messages that name the
// variable, and Pier's length limit on container IDs. Missing variables are
// left to skel, whose message lists them.
func CheckEnv(getenv func(string) string) error {
	if id := getenv("CNI_CONTAINERID"); id != "" {
		if err := utils.ValidateContainerID(id); err != nil {
			return cnierr.New(cnierr.InvalidEnv, "CNI_CONTAINERID %q: %s", id, err.Msg)
		}
		if len(id) > MaxContainerID {
			return cnierr.New(cnierr.InvalidEnv, "CNI_CONTAINERID is %d bytes long; pier supports container IDs up to %d bytes", len(id), MaxContainerID)
		}
	}
	if ifName := getenv("CNI_IFNAME"); ifName != "" {
		if err := utils.ValidateInterfaceName(ifName); err != nil {
			return cnierr.New(cnierr.InvalidEnv, "CNI_IFNAME %q: %s (%s)", ifName, err.Msg, err.Details)
		}
	}
	return nil
}
