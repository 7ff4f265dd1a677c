// Command flannelcni stands in for flannel's CNI plugin in the Kubernetes
// benchmark: flannel-io/cni-plugin is not served by the Go module proxy
// here, so this does what that plugin does, in as few steps: read the
// subnet file flanneld writes (FLANNEL_NETWORK, FLANNEL_SUBNET,
// FLANNEL_MTU, FLANNEL_IPMASQ), derive the delegate config — the reference
// bridge plugin with host-local IPAM on the node's subnet and a route to
// the cluster network, masquerade left to flanneld when it does it — save
// it for DEL under dataDir, and exec the delegate from CNI_PATH with it.
// It is written for the benchmark, not taken from flannel.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

type netConf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	SubnetFile string `json:"subnetFile"`
	DataDir    string `json:"dataDir"`
	// IPAMDataDir is host-local's dataDir (its default is the host's).
	IPAMDataDir string `json:"ipamDataDir"`
}

func main() {
	if err := run(); err != nil {
		fmt.Printf(`{"cniVersion":"1.0.0","code":999,"msg":%q}`+"\n", err.Error())
		os.Exit(1)
	}
}

func run() error {
	cmd := os.Getenv("CNI_COMMAND")
	if cmd == "VERSION" {
		fmt.Println(`{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}`)
		return nil
	}
	var c netConf
	stdin, err := readAll()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(stdin, &c); err != nil {
		return err
	}
	saved := filepath.Join(c.DataDir, os.Getenv("CNI_CONTAINERID"))
	var delegate []byte
	switch cmd {
	case "ADD":
		if delegate, err = delegateConf(c); err != nil {
			return err
		}
		if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(saved, delegate, 0o600); err != nil {
			return err
		}
	case "DEL":
		if delegate, err = os.ReadFile(saved); os.IsNotExist(err) {
			return nil // nothing was set up, or DEL ran already
		} else if err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s is not supported by the stand-in", cmd)
	}
	if err := execDelegate(delegate); err != nil {
		return err
	}
	if cmd == "DEL" {
		return os.Remove(saved)
	}
	return nil
}

func readAll() ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(os.Stdin)
	return b.Bytes(), err
}

// delegateConf builds the bridge config from the subnet file.
func delegateConf(c netConf) ([]byte, error) {
	env, err := readSubnetFile(c.SubnetFile)
	if err != nil {
		return nil, err
	}
	// flanneld writes the node's subnet as its first address and length
	// (10.245.11.1/24); host-local wants the network.
	sn, err := netip.ParsePrefix(env["FLANNEL_SUBNET"])
	if err != nil {
		return nil, fmt.Errorf("FLANNEL_SUBNET: %w", err)
	}
	d := map[string]any{
		"cniVersion": c.CNIVersion, "name": c.Name, "type": "bridge",
		"isGateway": true, "hairpinMode": true, "ipMasq": env["FLANNEL_IPMASQ"] != "true",
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": sn.Masked().String()}}},
			"routes":  []map[string]string{{"dst": env["FLANNEL_NETWORK"]}},
			"dataDir": c.IPAMDataDir,
		},
	}
	var mtu int
	if _, err := fmt.Sscan(env["FLANNEL_MTU"], &mtu); err == nil {
		d["mtu"] = mtu
	}
	return json.Marshal(d)
}

func readSubnetFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok {
			env[k] = v
		}
	}
	return env, sc.Err()
}

// execDelegate runs bridge from CNI_PATH with the same environment,
// passing its output through.
func execDelegate(conf []byte) error {
	var bin string
	for _, dir := range filepath.SplitList(os.Getenv("CNI_PATH")) {
		if _, err := os.Stat(filepath.Join(dir, "bridge")); err == nil {
			bin = filepath.Join(dir, "bridge")
			break
		}
	}
	if bin == "" {
		return fmt.Errorf("bridge not found in CNI_PATH")
	}
	cmd := exec.Command(bin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(conf), os.Stdout, os.Stderr
	return cmd.Run()
}
