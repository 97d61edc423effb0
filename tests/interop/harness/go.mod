module github.com/nsm-topology-sidecars/interop-harness

go 1.26.8

require (
	github.com/networkservicemesh/api v1.18.0 // indirect
	github.com/networkservicemesh/sdk v1.18.0 // indirect
	github.com/networkservicemesh/sdk-kernel v1.18.0 // indirect
)
