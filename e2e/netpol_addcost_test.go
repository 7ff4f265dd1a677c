package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNetworkPolicyUnclassifiedADDRestoresNothing guards the ADD's cost
// when the pod's chains do not exist yet (pierd has not seen the pod, or
// does not run). The ADD's one batch then fails with ENOENT (its elements
// lead to chains that are missing) and its slow path falls back to
// np-unclassified; nothing was flushed, yet the plugin took the slow path
// for a flushed ruleset and put back every other attachment of the
// network from its records, one nftables batch each: every such ADD costs
// O(attachments on the node).
func TestNetworkPolicyUnclassifiedADDRestoresNothing(t *testing.T) {
	n := newNode(t)
	logFile := filepath.Join(t.TempDir(), "pier.log")
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "npcost", "type": "pier", "bridge": "pier-npc",
  "isGateway": true, "ipMasq": true, "networkPolicy": true, "logFile": %q, "logLevel": "info",
  "ipam": {"type": "pier-ipam", "dataDir": %q, "subnet": "10.18.0.0/16"}}`, logFile, n.dataDir)
	const pods = 40
	var took []time.Duration
	for i := range pods {
		start := time.Now()
		n.mustAdd(n.container(fmt.Sprintf("c%d", i)), conf, fmt.Sprintf("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p%d", i))
		took = append(took, time.Since(start))
	}
	if os.Getenv("PIER_MEASURE") == "1" {
		t.Logf("ADD latency, pods not classified: 1st %v, 2nd %v, 20th %v, 40th %v", took[0], took[1], took[19], took[39])
	}
	b, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	restores := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "restored nftables state") && !strings.Contains(l, "container=c0 ") {
			restores++
			if restores <= 2 {
				t.Logf("%s", l)
			}
		}
	}
	// The first ADD builds the table (and restores itself); no later one
	// found anything missing but its own pod's chains.
	if restores > 0 {
		t.Errorf("%d of the %d ADDs after the first (nothing flushed) restored the network's other attachments", restores, pods-1)
	}
}
