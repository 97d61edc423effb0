//go:build tools

// Package tools pins SPIRE for the interop tests' secure mode: scripts/build-spire.sh builds
// spire-server and spire-agent v1.13.3 from this module (the Go module proxy serves the module but refuses
// `go install ...@v1.13.3`, having no version list), so go.mod and go.sum fix every dependency.
package tools

import (
	_ "github.com/spiffe/spire/cmd/spire-agent"
	_ "github.com/spiffe/spire/cmd/spire-server"
)
