package main

import (
	"context"
	"net/url"
	"time"

	"github.com/edwarnicke/genericsync"
	"github.com/golang/protobuf/ptypes/empty"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/cls"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"

	"github.com/networkservicemesh/sdk-kernel/pkg/kernel/networkservice/connectioncontextkernel"

	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/client"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/endpoint"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/connect"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/discover"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/recvfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanismtranslation"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/null"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/roundrobin"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	registryrecvfd "github.com/networkservicemesh/sdk/pkg/registry/common/recvfd"
	authmonitor "github.com/networkservicemesh/sdk/pkg/tools/monitorconnection/authorize"
)

// newForwarder composes a kernel-only forwarder from sdk and sdk-kernel elements plus the project's veth
// element, following forwarder-vpp's chain. On the way back from the endpoint (client chain, bottom-up):
// recvfd turns the endpoint's inode:// into a file, the veth client half creates the pair,
// connectioncontextkernel.NewClient addresses the endpoint side, and mechanismtranslation restores the
// client's mechanism; then (server chain) connectioncontextkernel.NewServer addresses the client side
// before the reply goes back to the nsmgr. vethReleaseServer, first of our elements, deletes the pair on
// Close.
//
// Secure, it authorizes like cmd-forwarder-vpp's main: the sdk's default NetworkService policies (common +
// server; xconnectns's own default, authorize.Any(), is overridden there) and the monitor authorizer
// sharing the spiffe id -> connections map.
func newForwarder(ctx context.Context, name string, sec *security, nsmgrURL *url.URL,
	dialTimeout time.Duration, strict bool, events *eventLog) endpoint.Endpoint {
	opts := sec.dialOptions()
	nsClient := registryclient.NewNetworkServiceRegistryClient(ctx,
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(opts...))
	nseClient := registryclient.NewNetworkServiceEndpointRegistryClient(ctx,
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(opts...),
		// the nsmgr hands over each endpoint's socket as an fd; the forwarder dials /proc/<pid>/fd/N
		registryclient.WithNSEAdditionalFunctionality(registryrecvfd.NewNetworkServiceEndpointRegistryClient()))

	var replyCheck networkservice.NetworkServiceClient = null.NewClient()
	if strict {
		replyCheck = &strictReplyClient{events: events}
	}
	endpointOpts := []endpoint.Option{endpoint.WithName(name)}
	if sec.secure() {
		spiffeIDConnMap := genericsync.Map[spiffeid.ID, *genericsync.Map[string, struct{}]]{}
		endpointOpts = append(endpointOpts,
			endpoint.WithAuthorizeServer(authorize.NewServer(authorize.WithSpiffeIDConnectionMap(&spiffeIDConnMap))),
			endpoint.WithAuthorizeMonitorConnectionServer(authmonitor.NewMonitorConnectionServer(authmonitor.WithSpiffeIDConnectionMap(&spiffeIDConnMap))))
	}
	return endpoint.NewServer(ctx, sec.tokenGenerator(), append(endpointOpts,
		endpoint.WithAdditionalFunctionality(
			newVethReleaseServer(events),
			recvfd.NewServer(),
			sendfd.NewServer(),
			discover.NewServer(nsClient, nseClient),
			roundrobin.NewServer(),
			mechanisms.NewServer(map[string]networkservice.NetworkServiceServer{kernel.MECHANISM: null.NewServer()}),
			connectioncontextkernel.NewServer(),
			newVethServer(events),
			connect.NewServer(client.NewClient(ctx,
				client.WithName(name),
				client.WithoutRefresh(),
				client.WithDialOptions(opts...),
				client.WithDialTimeout(dialTimeout),
				client.WithAdditionalFunctionality(
					mechanismtranslation.NewClient(),
					connectioncontextkernel.NewClient(),
					newVethClient(),
					replyCheck,
					&offerKernelClient{},
					recvfd.NewClient(),
					sendfd.NewClient(),
					&observeClient{events: events},
				),
			)),
		))...,
	)
}

// offerKernelClient offers the endpoint a KERNEL mechanism with empty parameters, exactly as
// forwarder-vpp's kernel clients (kerneltap, kernelvethpair) do: the endpoint fills in its netns and
// chooses its interface name.
type offerKernelClient struct{}

func (o *offerKernelClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	req.MechanismPreferences = append(req.MechanismPreferences,
		&networkservice.Mechanism{Cls: cls.LOCAL, Type: kernel.MECHANISM, Parameters: map[string]string{}})
	return next.Client(ctx).Request(ctx, req, opts...)
}

func (o *offerKernelClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*empty.Empty, error) {
	return next.Client(ctx).Close(ctx, conn, opts...)
}
