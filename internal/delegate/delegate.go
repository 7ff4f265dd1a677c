// Package delegate runs another CNI plugin — an IPAM plugin named by
// "ipam.type" — from CNI_PATH, as the spec's delegation section says: the
// same environment with CNI_COMMAND set to the verb, the same config on
// stdin, the result or error read from stdout.
//
// It does the job of the CNI library's pkg/invoke for the plugin binary,
// which runs once per container and so pays for every package it links at
// each start: pkg/invoke links OpenTelemetry and net/http for trace
// propagation, which costs `pier` start-up time on every ADD, delegated or
// not. Tools that are not exec'd per container (pierctl) use libcni.
package delegate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/containernetworking/cni/pkg/version"
)

// Add runs plugin's ADD and returns its result in the version it printed.
func Add(ctx context.Context, plugin string, netconf []byte) (types.Result, error) {
	out, err := run(ctx, "ADD", plugin, netconf)
	if err != nil {
		return nil, err
	}
	ver, err := resultVersion(netconf, out)
	if err != nil {
		return nil, fmt.Errorf("%s ADD: %w", plugin, err)
	}
	res, err := create.Create(ver, out)
	if err != nil {
		return nil, fmt.Errorf("%s ADD: decode result: %w", plugin, err)
	}
	return res, nil
}

// Run runs a verb that returns no result: DEL, CHECK, GC or STATUS.
func Run(ctx context.Context, verb, plugin string, netconf []byte) error {
	_, err := run(ctx, verb, plugin, netconf)
	return err
}

func run(ctx context.Context, verb, plugin string, netconf []byte) ([]byte, error) {
	path, err := find(plugin, os.Getenv("CNI_PATH"))
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = withCommand(os.Environ(), verb)
	cmd.Stdin = bytes.NewReader(netconf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if stderr.Len() > 0 {
		// The runtime collects a plugin's stderr; pass the delegate's on.
		_, _ = os.Stderr.Write(stderr.Bytes())
	}
	if err == nil {
		return stdout.Bytes(), nil
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		return nil, fmt.Errorf("run %s %s: %w", plugin, verb, err)
	}
	var cniErr types.Error
	if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Code != 0 {
		return nil, &cniErr
	}
	return nil, fmt.Errorf("%s %s failed (%v): %s", plugin, verb, err, strings.TrimSpace(stdout.String()+" "+stderr.String()))
}

// find looks plugin up in the CNI_PATH directories. A name with a path
// separator is refused: a config must not run an arbitrary binary.
func find(plugin, cniPath string) (string, error) {
	if plugin == "" || strings.ContainsRune(plugin, os.PathSeparator) || plugin == "." || plugin == ".." {
		return "", fmt.Errorf("invalid plugin name %q", plugin)
	}
	dirs := filepath.SplitList(cniPath)
	for _, dir := range dirs {
		full := filepath.Join(dir, plugin)
		if fi, err := os.Stat(full); err == nil && fi.Mode().IsRegular() {
			return full, nil
		}
	}
	return "", fmt.Errorf("plugin %q not found in CNI_PATH %q", plugin, cniPath)
}

func withCommand(env []string, verb string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CNI_COMMAND=") {
			out = append(out, kv)
		}
	}
	return append(out, "CNI_COMMAND="+verb)
}

// resultVersion is the version the delegate printed its result in; a result
// without "cniVersion" is in the config's version, as the spec says.
func resultVersion(netconf, result []byte) (string, error) {
	var r struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(result, &r); err != nil {
		return "", fmt.Errorf("result is not JSON: %w", err)
	}
	if r.CNIVersion != "" {
		return r.CNIVersion, nil
	}
	return (&version.ConfigDecoder{}).Decode(netconf)
}
