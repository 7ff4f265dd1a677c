// Package cnierr carries CNI error codes through Go errors.
//
// Code deep in Pier returns ordinary wrapped errors (fmt.Errorf with %w). Where a
// failure has a definite CNI meaning (a bad config value, an exhausted pool) the
// code that knows it wraps the cause with New or Wrap, and the CNI boundary
// (skel's return value) turns the chain into a *types.Error with ToCNI. Anything
// without a code is an I/O failure (code 5) from the caller's point of view.
package cnierr

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// Codes defined by the CNI specification, re-exported under short names, and
// Pier's own codes (100 and up), documented in README.md.
const (
	IncompatibleVersion uint = types.ErrIncompatibleCNIVersion // 1
	UnsupportedField    uint = types.ErrUnsupportedField       // 2
	UnknownContainer    uint = types.ErrUnknownContainer       // 3
	InvalidEnv          uint = types.ErrInvalidEnvironmentVariables
	IOFailure           uint = types.ErrIOFailure            // 5
	DecodingFailure     uint = types.ErrDecodingFailure      // 6
	InvalidConfig       uint = types.ErrInvalidNetworkConfig // 7
	TryAgainLater       uint = types.ErrTryAgainLater        // 11
	PluginNotAvailable  uint = types.ErrPluginNotAvailable   // 50
	LimitedConnectivity uint = types.ErrLimitedConnectivity  // 51

	// InterfaceExists: the container already has an interface with CNI_IFNAME,
	// or the host-side veth name is taken.
	InterfaceExists uint = 100
	// AddressUnavailable: a requested address is outside every range or held
	// by another container.
	AddressUnavailable uint = 101
	// PoolExhausted: a range set has no free address left.
	PoolExhausted uint = 102
	// NATConflict: the nftables state cannot be made to match the config.
	NATConflict uint = 103
	// PortConflict: a requested host port (protocol, port, host address) is
	// already mapped to another container.
	PortConflict uint = 104
)

// Error is an error with a CNI code. Msg is what a person reads first; the
// wrapped error (if any) becomes the details.
type Error struct {
	Code uint
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// New returns a coded error with a formatted message.
func New(code uint, format string, args ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Wrap attaches a code and message to err. A nil err gives nil.
func Wrap(err error, code uint, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Err: err}
}

// CodeOf returns the outermost code in err's chain, honouring *types.Error too,
// and IOFailure when there is none.
func CodeOf(err error) uint {
	var e *Error
	var t *types.Error
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.As(err, &t):
		return t.Code
	}
	return IOFailure
}

// ToCNI converts any error into the *types.Error that skel prints. The
// message is the whole chain — what failed and why — because runtimes often
// show only "msg"; the innermost cause is repeated in the details.
func ToCNI(err error) *types.Error {
	if err == nil {
		return nil
	}
	var t *types.Error
	if errors.As(err, &t) && t == err {
		return t
	}
	details := ""
	var e *Error
	if errors.As(err, &e) && e.Err != nil {
		details = e.Err.Error()
	} else if t != nil {
		details = t.Details
	}
	return &types.Error{Code: CodeOf(err), Msg: err.Error(), Details: details}
}
