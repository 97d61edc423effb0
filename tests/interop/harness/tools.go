package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/networkservicemesh/api/pkg/api/registry"

	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	"github.com/networkservicemesh/sdk/pkg/registry/common/retry"
)

// runRegisterNS registers one NetworkService, given as protojson (e.g. with matches), through the nsmgr.
func runRegisterNS(args []string) error {
	fs := flag.NewFlagSet("register-ns", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	connectTo := fs.String("connect-to", "", "nsmgr URL, unix:///path")
	service := fs.String("json", "", `the NetworkService as JSON, e.g. {"name":"p2p","payload":"IP","matches":[...]}`)
	timeout := fs.Duration("timeout", 10*time.Second, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nsmgrURL, err := parseUnixURL("connect-to", *connectTo)
	if err != nil {
		return err
	}
	ns := &registry.NetworkService{}
	if err = protojson.Unmarshal([]byte(*service), ns); err != nil {
		return fmt.Errorf("-json: %w", err)
	}
	ctx, cancel, err := common.setup("register-ns")
	if err != nil {
		return err
	}
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, *timeout)
	defer cancelTimeout()
	sec, err := common.security(ctx, "register-ns", time.Hour)
	if err != nil {
		return err
	}
	nsRegistry := registryclient.NewNetworkServiceRegistryClient(ctx, append(sec.registryClientOptions(),
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(sec.dialOptions()...),
		registryclient.WithNSRetryClient(retry.NewNetworkServiceRegistryClient(ctx, retry.WithTryTimeout(*timeout))))...)
	reply, err := nsRegistry.Register(ctx, ns)
	if err != nil {
		return err
	}
	fmt.Println(string(protoJSON(reply)))
	return nil
}

// runFindNSE prints every endpoint the nsmgr's registry returns for a service, one JSON line each.
func runFindNSE(args []string) error {
	fs := flag.NewFlagSet("find-nse", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	connectTo := fs.String("connect-to", "", "nsmgr URL, unix:///path")
	service := fs.String("service", "", "network service name")
	timeout := fs.Duration("timeout", 5*time.Second, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nsmgrURL, err := parseUnixURL("connect-to", *connectTo)
	if err != nil {
		return err
	}
	ctx, cancel, err := common.setup("find-nse")
	if err != nil {
		return err
	}
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, *timeout)
	defer cancelTimeout()
	sec, err := common.security(ctx, "find-nse", time.Hour)
	if err != nil {
		return err
	}
	nseRegistry := registryclient.NewNetworkServiceEndpointRegistryClient(ctx, append(sec.registryClientOptions(),
		registryclient.WithClientURL(nsmgrURL),
		registryclient.WithDialOptions(sec.dialOptions()...))...)
	stream, err := nseRegistry.Find(ctx, &registry.NetworkServiceEndpointQuery{
		NetworkServiceEndpoint: &registry.NetworkServiceEndpoint{NetworkServiceNames: []string{*service}},
	})
	if err != nil {
		return err
	}
	for _, nse := range registry.ReadNetworkServiceEndpointList(stream) {
		fmt.Println(string(protoJSON(nse)))
	}
	return nil
}
