// Package nodestatus is the file through which pierd tells pierctl what it
// knows of the node in a mode that routes between nodes: where the node's
// pod ranges come from, which routes it keeps and why some are missing.
// pierd rewrites it (atomically) after every reconcile; `pierctl node`
// reads it and sets it beside the kernel's own route table. It lives next
// to pierd's socket, in pierd's own directory.
package nodestatus

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// FileName is the status file's name in the socket's directory.
const FileName = "node.json"

// PathFor returns the status file of the pierd serving socket.
func PathFor(socket string) string { return filepath.Join(filepath.Dir(socket), FileName) }

// Status is what pierd knows of its node.
type Status struct {
	// Datastore is where the node's ranges and the other nodes come from:
	// "kubernetes" (the API server at Server).
	Datastore string `json:"datastore"`
	Server    string `json:"server,omitempty"`
	Node      string `json:"node"`
	// PodCIDRs are the node's ranges, PodCIDRSource where they came from.
	PodCIDRs      []netip.Prefix `json:"podCIDRs"`
	PodCIDRSource string         `json:"podCIDRSource,omitempty"`
	// Conflist is the CNI config pierd wrote for the runtime ("" until the
	// ranges are known).
	Conflist string `json:"conflist,omitempty"`
	// Mode is the routing mode; VTEP and VTEPMAC the vxlan device's.
	Mode    string     `json:"mode"`
	VTEP    netip.Addr `json:"vtep,omitzero"`
	VTEPMAC string     `json:"vtepMAC,omitempty"`
	// Routes are the routes pierd keeps, each with the node it leads to.
	Routes []Route `json:"routes"`
	// Problems say what is not routed and why.
	Problems []string `json:"problems,omitempty"`
	// Nodes is how many Node objects pierd knows.
	Nodes int `json:"nodes"`
	// Synced is the last reconcile; ApplyError its failure, if any.
	Synced     time.Time `json:"synced,omitzero"`
	ApplyError string    `json:"applyError,omitempty"`
}

// Route is one route to another node's pod range.
type Route struct {
	Dst  netip.Prefix `json:"dst"`
	Via  netip.Addr   `json:"via"`
	Node string       `json:"node"`
}

// Write replaces the file at path with s (temp file and rename: a reader
// never sees half of it), readable by root only.
func Write(path string, s Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Read reads the file at path.
func Read(path string) (Status, error) {
	var s Status
	b, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(b, &s)
}
