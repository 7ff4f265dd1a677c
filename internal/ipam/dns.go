package ipam

import (
	"bufio"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/pier-cni/pier/internal/cnierr"
)

// ParseResolvConf reads the DNS settings of a result from a resolv.conf:
// nameserver, domain, search and options lines, as the reference does.
func ParseResolvConf(path string) (types.DNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return types.DNS{}, cnierr.Wrap(err, cnierr.InvalidConfig, `"ipam.resolvConf": %q cannot be read`, path)
	}
	defer f.Close() // read-only: a close error cannot lose data
	var dns types.DNS
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || strings.HasPrefix(fields[0], "#") || strings.HasPrefix(fields[0], ";") {
			continue
		}
		switch fields[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, fields[1])
		case "domain":
			dns.Domain = fields[1]
		case "search":
			dns.Search = append(dns.Search, fields[1:]...)
		case "options":
			dns.Options = append(dns.Options, fields[1:]...)
		}
	}
	if err := sc.Err(); err != nil {
		return types.DNS{}, cnierr.Wrap(err, cnierr.InvalidConfig, `"ipam.resolvConf": %q cannot be read`, path)
	}
	return dns, nil
}
