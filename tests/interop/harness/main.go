// Command nsmharness runs NSM's real Go control plane (sdk v1.18.0 chains) on unix sockets, plus
// reference Go NSC and NSE programs, so that the project's Python sidecars can be tested against it.
//
// Subcommands:
//
//	control-plane  registry + nsmgr + kernel (veth) forwarder; writes ready.json with the URLs
//	nsc            a Go client built from the sdk's client chain (KERNEL mechanism)
//	nse            a Go endpoint built from the sdk's endpoint chain (KERNEL, point-to-point IPAM)
//	register-ns    registers a NetworkService (e.g. one with matches) through the nsmgr
//	find-nse       prints the endpoints the nsmgr's registry knows for a service (one JSON line each)
//	foreign        Close or refresh someone else's connection (ownership checks, secure mode)
//
// By default everything runs insecure (grpcfd over cleartext, HS256 test tokens, authorize.Any()), as the
// sdk's own sandbox does. With -spiffe, every subcommand is secured as the cmd-* apps are: an X.509-SVID
// from the Workload API at SPIFFE_ENDPOINT_SOCKET, grpcfd over mTLS, ES256 path tokens (spiffejwt), and the
// sdk's default authorization policies (security.go).
package main

import (
	"fmt"
	"os"
)

func main() {
	commands := map[string]func(args []string) error{
		"control-plane": runControlPlane,
		"nsc":           runNSC,
		"nse":           runNSE,
		"register-ns":   runRegisterNS,
		"find-nse":      runFindNSE,
		"foreign":       runForeign,
	}
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: nsmharness control-plane|nsc|nse|register-ns|find-nse|foreign [flags]")
		os.Exit(2)
	}
	if err := commands[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "nsmharness %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
