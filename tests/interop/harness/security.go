package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/sirupsen/logrus"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	registryauthorize "github.com/networkservicemesh/sdk/pkg/registry/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/tools/spiffejwt"
	"github.com/networkservicemesh/sdk/pkg/tools/token"
)

// The default OPA policy sets of the cmd-* apps (NSM_REGISTRY_SERVER_POLICIES and
// NSM_REGISTRY_CLIENT_POLICIES of cmd-nsmgr, cmd-registry-memory, cmd-nse-icmp-responder and
// cmd-forwarder-vpp). The sdk embeds the .rego files under these names.
var (
	registryServerPolicies = []string{"etc/nsm/opa/common/.*.rego", "etc/nsm/opa/registry/.*.rego", "etc/nsm/opa/server/.*.rego"}
	registryClientPolicies = []string{"etc/nsm/opa/common/.*.rego", "etc/nsm/opa/registry/.*.rego", "etc/nsm/opa/client/.*.rego"}
)

// security is how one component authenticates: insecure (cleartext, HS256 test tokens nobody checks, as in
// the sdk's sandbox) or SPIFFE (an X.509-SVID from the Workload API at SPIFFE_ENDPOINT_SOCKET, mTLS on
// every hop, ES256 path tokens signed with the SVID key), wired as cmd-nsmgr and the other cmd-* apps do.
type security struct {
	source   *workloadapi.X509Source // nil when insecure
	subject  string                  // insecure only: the test token's subject
	lifetime time.Duration           // maximum token lifetime (NSM_MAX_TOKEN_LIFETIME)
}

// newSecurity returns the insecure mode unless spiffe is set. With spiffe, it waits (bounded by timeout)
// for the first X509-SVID update of the Workload API. The component's SVID is the one whose SPIFFE id path
// is "/<component>" if the Workload API offers several (the control plane runs the registry, the nsmgr
// and the forwarder in one process, each with its own identity), else the first one, as go-spiffe does.
func newSecurity(ctx context.Context, spiffe bool, component string, lifetime, timeout time.Duration) (*security, error) {
	if !spiffe {
		return &security{subject: component, lifetime: lifetime}, nil
	}
	want := "/" + component
	pick := func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, svid := range svids {
			if svid.ID.Path() == want {
				return svid
			}
		}
		if len(svids) == 0 {
			return nil
		}
		return svids[0]
	}
	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// the source lives as long as ctx; NewX509Source returns once the first update has arrived
	source, err := workloadapi.NewX509Source(waitCtx, workloadapi.WithDefaultX509SVIDPicker(pick))
	if err != nil {
		return nil, fmt.Errorf("X509 source for %s from the Workload API (SPIFFE_ENDPOINT_SOCKET): %w", component, err)
	}
	go func() {
		<-ctx.Done()
		_ = source.Close()
	}()
	svid, err := source.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("X509-SVID for %s: %w", component, err)
	}
	logrus.Infof("%s: SVID %q, valid until %s", component, svid.ID, svid.Certificates[0].NotAfter.Format(time.RFC3339))
	return &security{source: source, lifetime: lifetime}, nil
}

func (s *security) secure() bool { return s.source != nil }

// spiffeID is the SPIFFE id currently served for this component ("" when insecure).
func (s *security) spiffeID() string {
	if s.source == nil {
		return ""
	}
	svid, err := s.source.GetX509SVID()
	if err != nil {
		return ""
	}
	return svid.ID.String()
}

// tokenGenerator signs path tokens: spiffejwt (ES256 with the SVID key, aud = the TLS peer's id, expiry
// capped by both certificates) when secure, HS256 test tokens otherwise. Under authorize.Any() nobody
// verifies the latter, but their expiry drives the real timeout, refresh and registry expiry logic.
func (s *security) tokenGenerator() token.GeneratorFunc {
	if s.source != nil {
		return spiffejwt.TokenGeneratorFunc(s.source, s.lifetime)
	}
	return tokenGenerator(s.subject, s.lifetime)
}

// serverCreds: grpcfd below TLS (fds ride on the unix socket) as cmd-nsmgr serves, or grpcfd over cleartext.
func (s *security) serverCreds() grpc.ServerOption {
	if s.source == nil {
		return grpc.Creds(grpcfd.TransportCredentials(insecure.NewCredentials()))
	}
	config := tlsconfig.MTLSServerConfig(s.source, s.source, tlsconfig.AuthorizeAny())
	config.MinVersion = tls.VersionTLS12
	return grpc.Creds(grpcfd.TransportCredentials(credentials.NewTLS(config)))
}

// dialOptions are what every Go component uses to dial: grpcfd over mTLS (or cleartext), the path token
// as per-RPC metadata, and WaitForReady like cmd-nsc.
func (s *security) dialOptions() []grpc.DialOption {
	transport := grpcfd.TransportCredentials(insecure.NewCredentials())
	perRPC := token.NewPerRPCCredentials(s.tokenGenerator())
	if s.source != nil {
		config := tlsconfig.MTLSClientConfig(s.source, s.source, tlsconfig.AuthorizeAny())
		config.MinVersion = tls.VersionTLS12
		transport = grpcfd.TransportCredentials(credentials.NewTLS(config))
	} else {
		perRPC = insecurePerRPC{perRPC}
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true), grpc.PerRPCCredentials(perRPC)),
		grpcfd.WithChainStreamInterceptor(),
		grpcfd.WithChainUnaryInterceptor(),
	}
}

// registryClientOptions: secure, the registry client authorizers of cmd-nse-icmp-responder (its
// NSM_REGISTRY_CLIENT_POLICIES check the path the nsmgr sends back); the chain's defaults (Any) otherwise.
func (s *security) registryClientOptions() []registryclient.Option {
	if s.source == nil {
		return nil
	}
	return []registryclient.Option{
		registryclient.WithAuthorizeNSRegistryClient(registryauthorize.NewNetworkServiceRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))),
		registryclient.WithAuthorizeNSERegistryClient(registryauthorize.NewNetworkServiceEndpointRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))),
	}
}
