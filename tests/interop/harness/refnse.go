package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang/protobuf/ptypes/empty"
	"github.com/sirupsen/logrus"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"
	"github.com/networkservicemesh/api/pkg/api/registry"

	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/endpoint"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms"
	kernelmech "github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/kernel"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
	"github.com/networkservicemesh/sdk/pkg/networkservice/ipam/point2pointipam"
	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	"github.com/networkservicemesh/sdk/pkg/registry/common/retry"
	registrysendfd "github.com/networkservicemesh/sdk/pkg/registry/common/sendfd"
)

// runNSE is a reference endpoint modelled on cmd-nse-icmp-responder: the sdk's endpoint chain with
// point-to-point IPAM and the KERNEL mechanism (its netns goes back to the forwarder as an fd), serving on
// its own unix socket, and registered (NetworkService, then NetworkServiceEndpoint with the socket as an
// fd) through the nsmgr. It refreshes its registration until SIGTERM, then unregisters.
func runNSE(args []string) error {
	fs := flag.NewFlagSet("nse", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	connectTo := fs.String("connect-to", "", "nsmgr URL, unix:///path")
	listenOn := fs.String("listen-on", "", "own socket, unix:///path (default: a fresh temp dir)")
	name := fs.String("name", "nse-go", "endpoint name")
	services := fs.String("services", "", "comma-separated network service names")
	labels := fs.String("labels", "", "endpoint labels k=v,k=v (for every service)")
	cidr := fs.String("cidr", "169.254.0.0/16", "point-to-point IPAM prefix (NSM_CIDR_PREFIX)")
	payload := fs.String("payload", "ETHERNET", "payload of the registered NetworkService")
	registerService := fs.Bool("register-service", true, "register the NetworkService too (NSM_REGISTER_SERVICE)")
	withoutFD := fs.Bool("without-fd", false, "misbehave on purpose: answer with file:///proc/<pid>/ns/net and send no fd (to check strict mode)")
	unregister := fs.Bool("unregister", false, "unregister on SIGTERM (NSM_UNREGISTER_ITSELF; off by default, as in cmd-nse-icmp-responder)")
	tokenLifetime := fs.Duration("token-lifetime", 10*time.Minute, "lifetime of our path token (NSM_MAX_TOKEN_LIFETIME)")
	requestTimeout := fs.Duration("request-timeout", 15*time.Second, "deadline of each registry call (keep it below a third of the registration expiry)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nsmgrURL, err := parseUnixURL("connect-to", *connectTo)
	if err != nil {
		return err
	}
	if *services == "" {
		return fmt.Errorf("-services is required")
	}
	serviceNames := strings.Split(*services, ",")
	nseLabels, err := parseLabels(*labels, "=")
	if err != nil {
		return err
	}
	_, prefix, err := net.ParseCIDR(*cidr)
	if err != nil {
		return fmt.Errorf("-cidr: %w", err)
	}
	if *listenOn == "" {
		dir, tmpErr := os.MkdirTemp("", "nse-go-")
		if tmpErr != nil {
			return tmpErr
		}
		defer func() { _ = os.RemoveAll(dir) }()
		*listenOn = "unix://" + filepath.Join(dir, "listen.on")
	}
	listenURL, err := parseUnixURL("listen-on", *listenOn)
	if err != nil {
		return err
	}
	signalCtx, cancel, err := common.setup("nse")
	if err != nil {
		return err
	}
	defer cancel()
	// The chains outlive the signal, so that the final Unregister can still use them.
	ctx, cancelChains := context.WithCancel(context.WithoutCancel(signalCtx))
	defer cancelChains()

	sec, err := common.security(ctx, *name, *tokenLifetime)
	if err != nil {
		return err
	}
	var netnsSender networkservice.NetworkServiceServer = sendfd.NewServer()
	if *withoutFD {
		netnsSender = &fileNetNSServer{url: fmt.Sprintf("file:///proc/%d/ns/net", os.Getpid())}
	}
	endpointOpts := []endpoint.Option{endpoint.WithName(*name)}
	if sec.secure() {
		// cmd-nse-icmp-responder: the default NetworkService policies (common + server); monitoring stays
		// with the endpoint chain's default (authmonitor.Any())
		endpointOpts = append(endpointOpts, endpoint.WithAuthorizeServer(authorize.NewServer()))
	}
	nse := endpoint.NewServer(ctx, sec.tokenGenerator(), append(endpointOpts,
		endpoint.WithAdditionalFunctionality(
			point2pointipam.NewServer(prefix),
			mechanisms.NewServer(map[string]networkservice.NetworkServiceServer{kernel.MECHANISM: kernelmech.NewServer()}),
			netnsSender,
		))...)
	if err = serve(ctx, listenURL, sec, nse.Register); err != nil {
		return err
	}

	nseRegistry, err := register(ctx, sec, nsmgrURL, *requestTimeout, *registerService, *payload, &registry.NetworkServiceEndpoint{
		Name:                 *name,
		NetworkServiceNames:  serviceNames,
		NetworkServiceLabels: labelsForEach(serviceNames, nseLabels),
		Url:                  listenURL.String(),
	})
	if err != nil {
		return err
	}
	logrus.Infof("endpoint %s registered and serving on %s", *name, listenURL)
	printJSON(map[string]string{"event": "registered", "name": *name, "url": listenURL.String()})

	<-signalCtx.Done()
	if *unregister {
		unregCtx, unregCancel := context.WithTimeout(ctx, *requestTimeout)
		defer unregCancel()
		if _, err := nseRegistry.Unregister(unregCtx, &registry.NetworkServiceEndpoint{Name: *name, Url: listenURL.String()}); err != nil {
			logrus.Warnf("unregister: %v", err)
		}
	}
	return nil
}

// register registers the services (optionally) and the endpoint, like cmd-nse-icmp-responder; the
// returned client keeps refreshing the endpoint's registration.
func register(ctx context.Context, sec *security, nsmgrURL *url.URL, tryTimeout time.Duration,
	registerService bool, payload string, nse *registry.NetworkServiceEndpoint) (registry.NetworkServiceEndpointRegistryClient, error) {
	opts := sec.dialOptions()
	if registerService {
		nsRegistry := registryclient.NewNetworkServiceRegistryClient(ctx, append(sec.registryClientOptions(),
			registryclient.WithClientURL(nsmgrURL),
			registryclient.WithDialOptions(opts...),
			registryclient.WithNSRetryClient(retry.NewNetworkServiceRegistryClient(ctx, retry.WithTryTimeout(tryTimeout))))...)
		for _, svc := range nse.GetNetworkServiceNames() {
			if _, err := nsRegistry.Register(ctx, &registry.NetworkService{Name: svc, Payload: payload}); err != nil {
				return nil, fmt.Errorf("registering service %s: %w", svc, err)
			}
		}
	}
	nseRegistry := registryclient.NewNetworkServiceEndpointRegistryClient(ctx, append(sec.registryClientOptions(),
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(opts...),
		// each try's deadline shortens the expiry the nsmgr grants (it expires at expiration - deadline)
		registryclient.WithNSERetryClient(retry.NewNetworkServiceEndpointRegistryClient(ctx, retry.WithTryTimeout(tryTimeout))),
		registryclient.WithNSEAdditionalFunctionality(registrysendfd.NewNetworkServiceEndpointRegistryClient()))...)
	if _, err := nseRegistry.Register(ctx, nse); err != nil {
		return nil, fmt.Errorf("registering endpoint %s: %w", nse.GetName(), err)
	}
	return nseRegistry, nil
}

func labelsForEach(services []string, labels map[string]string) map[string]*registry.NetworkServiceLabels {
	result := map[string]*registry.NetworkServiceLabels{}
	for _, svc := range services {
		result[svc] = &registry.NetworkServiceLabels{Labels: labels}
	}
	return result
}

// fileNetNSServer replaces sendfd in -without-fd mode: the reply names the netns by a path instead of
// passing it as an fd.
type fileNetNSServer struct{ url string }

func (f *fileNetNSServer) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	conn, err := next.Server(ctx).Request(ctx, req)
	if err != nil {
		return nil, err
	}
	if mech := kernel.ToMechanism(conn.GetMechanism()); mech != nil {
		mech.SetNetNSURL(f.url)
	}
	return conn, nil
}

func (f *fileNetNSServer) Close(ctx context.Context, conn *networkservice.Connection) (*empty.Empty, error) {
	return next.Server(ctx).Close(ctx, conn)
}
