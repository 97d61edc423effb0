package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/edwarnicke/genericsync"
	"github.com/sirupsen/logrus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/registry"

	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/nsmgr"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	"github.com/networkservicemesh/sdk/pkg/registry/chains/memory"
	registryauthorize "github.com/networkservicemesh/sdk/pkg/registry/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/registry/common/retry"
	registrysendfd "github.com/networkservicemesh/sdk/pkg/registry/common/sendfd"
	"github.com/networkservicemesh/sdk/pkg/tools/grpcutils"
	authmonitor "github.com/networkservicemesh/sdk/pkg/tools/monitorconnection/authorize"
)

// readyInfo is written to <dir>/ready.json once every server listens and the forwarder is registered.
type readyInfo struct {
	Pid          int    `json:"pid"`
	RegistryURL  string `json:"registry_url"`
	NsmgrURL     string `json:"nsmgr_url"`
	ForwarderURL string `json:"forwarder_url"`
	NsmgrName    string `json:"nsmgr_name"`
	Forwarder    string `json:"forwarder_name"`
	Events       string `json:"events"`
	Strict       bool   `json:"strict"`
	// SPIFFE ids of the registry, the nsmgr and the forwarder (empty when insecure)
	SpiffeIDs map[string]string `json:"spiffe_ids"`
}

// runControlPlane serves, each on its own unix socket under -dir: the sdk's memory registry chain, the
// sdk's nsmgr chain (the one cmd-nsmgr runs) backed by that registry, and the kernel forwarder.
func runControlPlane(args []string) error {
	fs := flag.NewFlagSet("control-plane", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	dir := fs.String("dir", "", "directory for the sockets, ready.json and events.jsonl (keep it short: unix socket paths)")
	tokenLifetime := fs.Duration("token-lifetime", 10*time.Minute, "lifetime of the tokens the Go components sign")
	expiry := fs.Duration("registration-expiry", time.Minute, "registry default expiration for endpoints (nsmgr and registry)")
	dialTimeout := fs.Duration("dial-timeout", 750*time.Millisecond, "nsmgr->registry/forwarder and forwarder->endpoint dial timeout (cmd-nsmgr's default)")
	requestTimeout := fs.Duration("request-timeout", 15*time.Second, "deadline of each try of the forwarder's registration (keep it below a third of the expiry)")
	strict := fs.Bool("strict", false, "refuse netns and endpoint URLs that are not inode:// with a received fd")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("-dir is required")
	}
	ctx, cancel, err := common.setup("control-plane")
	if err != nil {
		return err
	}
	defer cancel()

	events, err := openEventLog(filepath.Join(*dir, "events.jsonl"))
	if err != nil {
		return err
	}
	sock := func(name string) *url.URL { return &url.URL{Scheme: "unix", Path: filepath.Join(*dir, name)} }
	registryURL, nsmgrURL, forwarderURL := sock("registry.sock"), sock("nsm.sock"), sock("fwd.sock")
	const nsmgrName, forwarderName = "nsmgr-harness", "forwarder-harness"

	// one identity per component, as in a cluster (each picks its own SVID if the Workload API offers several)
	regSec, err := common.security(ctx, "registry", *tokenLifetime)
	if err != nil {
		return err
	}
	mgrSec, err := common.security(ctx, "nsmgr", *tokenLifetime)
	if err != nil {
		return err
	}
	fwdSec, err := common.security(ctx, "forwarder", *tokenLifetime)
	if err != nil {
		return err
	}
	if !mgrSec.secure() { // the test tokens' subjects, as before
		regSec.subject, mgrSec.subject, fwdSec.subject = "registry", nsmgrName, forwarderName
	}

	// registry: what cmd-registry-memory runs
	regOpts := []memory.Option{
		memory.WithDefaultExpiration(*expiry),
		memory.WithDialOptions(regSec.dialOptions()...),
	}
	if regSec.secure() {
		regOpts = append(regOpts,
			memory.WithAuthorizeNSERegistryServer(registryauthorize.NewNetworkServiceEndpointRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
			memory.WithAuthorizeNSERegistryClient(registryauthorize.NewNetworkServiceEndpointRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))),
			memory.WithAuthorizeNSRegistryServer(registryauthorize.NewNetworkServiceRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
			memory.WithAuthorizeNSRegistryClient(registryauthorize.NewNetworkServiceRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))))
	}
	reg := memory.NewServer(ctx, regSec.tokenGenerator(), regOpts...)
	if err = serve(ctx, registryURL, regSec, reg.Register); err != nil {
		return err
	}

	// nsmgr: what cmd-nsmgr runs, with its public URL being the local socket
	mgrOpts := []nsmgr.Option{
		nsmgr.WithName(nsmgrName),
		nsmgr.WithURL(nsmgrURL.String()),
		nsmgr.WithRegistry(registryURL),
		nsmgr.WithDefaultExpiration(*expiry),
		nsmgr.WithDialTimeout(*dialTimeout),
		nsmgr.WithDialOptions(mgrSec.dialOptions()...),
	}
	if mgrSec.secure() {
		// cmd-nsmgr's internal/manager: the default NetworkService policies (common + server), the monitor
		// authorizer sharing the spiffe id -> connections map (it has no policy by default), and the
		// registry policies of NSM_REGISTRY_SERVER_POLICIES / NSM_REGISTRY_CLIENT_POLICIES
		spiffeIDConnMap := genericsync.Map[spiffeid.ID, *genericsync.Map[string, struct{}]]{}
		mgrOpts = append(mgrOpts,
			nsmgr.WithAuthorizeServer(authorize.NewServer(authorize.WithSpiffeIDConnectionMap(&spiffeIDConnMap))),
			nsmgr.WithAuthorizeMonitorConnectionServer(authmonitor.NewMonitorConnectionServer(authmonitor.WithSpiffeIDConnectionMap(&spiffeIDConnMap))),
			nsmgr.WithAuthorizeNSERegistryServer(registryauthorize.NewNetworkServiceEndpointRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
			nsmgr.WithAuthorizeNSERegistryClient(registryauthorize.NewNetworkServiceEndpointRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))),
			nsmgr.WithAuthorizeNSRegistryServer(registryauthorize.NewNetworkServiceRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
			nsmgr.WithAuthorizeNSRegistryClient(registryauthorize.NewNetworkServiceRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))))
	}
	mgr := nsmgr.NewServer(ctx, mgrSec.tokenGenerator(), mgrOpts...)
	front := &frontServer{nsmgr: mgr, strict: *strict, events: events}
	frontRegistry := &frontNSERegistry{NetworkServiceEndpointRegistryServer: mgr.NetworkServiceEndpointRegistryServer(), strict: *strict, events: events}
	err = serve(ctx, nsmgrURL, mgrSec, func(s *grpc.Server) {
		grpcutils.RegisterHealthServices(s, mgr, mgr.NetworkServiceEndpointRegistryServer(), mgr.NetworkServiceRegistryServer())
		networkservice.RegisterNetworkServiceServer(s, front)
		networkservice.RegisterMonitorConnectionServer(s, mgr)
		registry.RegisterNetworkServiceRegistryServer(s, &frontNSRegistry{NetworkServiceRegistryServer: mgr.NetworkServiceRegistryServer(), events: events})
		registry.RegisterNetworkServiceEndpointRegistryServer(s, frontRegistry)
	})
	if err != nil {
		return err
	}

	// forwarder, registered through the nsmgr like cmd-forwarder-vpp (its socket travels as an fd)
	fwd := newForwarder(ctx, forwarderName, fwdSec, nsmgrURL, *dialTimeout, *strict, events)
	if err = serve(ctx, forwarderURL, fwdSec, fwd.Register); err != nil {
		return err
	}
	fwdRegistryOpts := []registryclient.Option{
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(fwdSec.dialOptions()...),
		registryclient.WithNSERetryClient(retry.NewNetworkServiceEndpointRegistryClient(ctx, retry.WithTryTimeout(*requestTimeout))),
		registryclient.WithNSEAdditionalFunctionality(registrysendfd.NewNetworkServiceEndpointRegistryClient()),
	}
	if fwdSec.secure() {
		fwdRegistryOpts = append(fwdRegistryOpts, registryclient.WithAuthorizeNSERegistryClient(
			registryauthorize.NewNetworkServiceEndpointRegistryClient(registryauthorize.WithPolicies(registryClientPolicies...))))
	}
	fwdRegistry := registryclient.NewNetworkServiceEndpointRegistryClient(ctx, fwdRegistryOpts...)
	_, err = fwdRegistry.Register(ctx, &registry.NetworkServiceEndpoint{
		Name:                forwarderName,
		NetworkServiceNames: []string{"forwarder"},
		NetworkServiceLabels: map[string]*registry.NetworkServiceLabels{
			"forwarder": {Labels: map[string]string{"p2p": "true"}},
		},
		Url: forwarderURL.String(),
	})
	if err != nil {
		return fmt.Errorf("registering the forwarder: %w", err)
	}

	info, _ := json.Marshal(readyInfo{
		Pid: os.Getpid(), RegistryURL: registryURL.String(), NsmgrURL: nsmgrURL.String(),
		ForwarderURL: forwarderURL.String(), NsmgrName: nsmgrName, Forwarder: forwarderName,
		Events: events.file.Name(), Strict: *strict,
		SpiffeIDs: map[string]string{"registry": regSec.spiffeID(), "nsmgr": mgrSec.spiffeID(), "forwarder": fwdSec.spiffeID()},
	})
	if err = writeFileAtomic(filepath.Join(*dir, "ready.json"), info); err != nil {
		return err
	}
	logrus.Infof("control plane ready: %s", info)
	<-ctx.Done()
	logrus.Info("control plane stopping")
	return nil
}
