package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang/protobuf/ptypes/empty"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"

	kernelheal "github.com/networkservicemesh/sdk-kernel/pkg/kernel/tools/heal"

	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/client"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/heal"
	kernelmech "github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/kernel"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/upstreamrefresh"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
)

// runNSC is a reference client modelled on cmd-nsc: the sdk's client chain with heal (ICMP liveness
// check), upstream refresh, the KERNEL mechanism with a fixed interface name and sendfd (its netns travels
// as an fd). It runs in the client's netns, requests one connection (retrying like cmd-nsc), writes the
// returned Connection as JSON to -out, and closes it on SIGTERM. With -timing it also prints how long its
// Request took (bench/versus_go.py); by default it prints nothing.
func runNSC(args []string) error {
	entered := time.Now()
	fs := flag.NewFlagSet("nsc", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	connectTo := fs.String("connect-to", "", "nsmgr URL, unix:///path")
	name := fs.String("name", "nsc-go", "client name (path segment; connection id <name>-0)")
	service := fs.String("service", "", "network service to request")
	ifname := fs.String("ifname", "nsm-1", "interface name for the KERNEL mechanism")
	labels := fs.String("labels", "", "request labels k=v,k=v")
	out := fs.String("out", "", "file to write the returned Connection to (JSON)")
	tokenLifetime := fs.Duration("token-lifetime", 10*time.Minute, "lifetime of our path token (NSM_MAX_TOKEN_LIFETIME)")
	requestTimeout := fs.Duration("request-timeout", 15*time.Second, "deadline of each Request/Close (NSM_REQUEST_TIMEOUT)")
	dialTimeout := fs.Duration("dial-timeout", 5*time.Second, "dial timeout (NSM_DIAL_TIMEOUT)")
	withoutFD := fs.Bool("without-fd", false, "misbehave on purpose: name the netns as file:///proc/<pid>/ns/net and send no fd (to check strict mode)")
	timing := fs.Bool("timing", false, "print one JSON line to stdout once connected and -out written: when runNSC was entered, the first Request started and -out was written (wall clock), how long the Requests took (bench/versus_go.py)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nsmgrURL, err := parseUnixURL("connect-to", *connectTo)
	if err != nil {
		return err
	}
	if *service == "" {
		return fmt.Errorf("-service is required")
	}
	requestLabels, err := parseLabels(*labels, "=")
	if err != nil {
		return err
	}
	signalCtx, cancel, err := common.setup("nsc")
	if err != nil {
		return err
	}
	defer cancel()
	// The chain outlives the signal: its connections must still be usable for the final Close.
	ctx, cancelChain := context.WithCancel(context.WithoutCancel(signalCtx))
	defer cancelChain()

	var netnsSender networkservice.NetworkServiceClient = sendfd.NewClient()
	if *withoutFD {
		netnsSender = &fileNetNSClient{url: fmt.Sprintf("file:///proc/%d/ns/net", os.Getpid())}
	}
	sec, err := common.security(ctx, *name, *tokenLifetime)
	if err != nil {
		return err
	}
	clientOpts := []client.Option{
		client.WithName(*name),
		client.WithClientURL(nsmgrURL),
		client.WithDialOptions(sec.dialOptions()...),
		client.WithDialTimeout(*dialTimeout),
		client.WithHealClient(heal.NewClient(ctx, heal.WithLivenessCheck(kernelheal.KernelLivenessCheck))),
		client.WithAdditionalFunctionality(
			upstreamrefresh.NewClient(ctx),
			kernelmech.NewClient(kernelmech.WithInterfaceName(*ifname)),
			netnsSender,
		),
	}
	if sec.secure() {
		// cmd-nsc: the default client policies (common + next_token_signed) over the returned path
		clientOpts = append(clientOpts, client.WithAuthorizeClient(authorize.NewClient()))
	}
	nsc := client.NewClient(ctx, clientOpts...)
	request := &networkservice.NetworkServiceRequest{
		Connection: &networkservice.Connection{
			Id:             *name + "-0",
			NetworkService: *service,
			Labels:         requestLabels,
		},
	}

	var conn *networkservice.Connection
	firstTry, attempts, lastTry := time.Now(), 0, time.Duration(0)
	for conn == nil {
		reqCtx, reqCancel := context.WithTimeout(signalCtx, *requestTimeout)
		attempts++
		tryStart := time.Now()
		conn, err = nsc.Request(reqCtx, request.Clone())
		lastTry = time.Since(tryStart)
		reqCancel()
		if err != nil {
			logrus.Warnf("request failed, retrying: %v", err)
			select {
			case <-signalCtx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	allTries := time.Since(firstTry)
	logrus.Infof("connection established: %s", protoJSON(conn))
	if *out != "" {
		if err := writeFileAtomic(*out, protoJSON(conn)); err != nil {
			return err
		}
	}
	if *timing {
		printJSON(map[string]any{
			"event":         "nsc.request_timing",
			"entered":       entered.UTC().Format(time.RFC3339Nano),
			"request_start": firstTry.UTC().Format(time.RFC3339Nano),
			"total_ms":      float64(allTries.Microseconds()) / 1000,
			"last_ms":       float64(lastTry.Microseconds()) / 1000,
			"attempts":      attempts,
			"ready":         time.Now().UTC().Format(time.RFC3339Nano), // -out written
		})
	}

	<-signalCtx.Done()
	closeCtx, closeCancel := context.WithTimeout(ctx, *requestTimeout)
	defer closeCancel()
	if _, err := nsc.Close(closeCtx, conn); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	logrus.Info("connection closed")
	return nil
}

// parseLabels reads k<sep>v,k<sep>v.
func parseLabels(s, sep string) (map[string]string, error) {
	labels := map[string]string{}
	if s == "" {
		return labels, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, sep)
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q is not k%sv", kv, sep)
		}
		labels[k] = v
	}
	return labels, nil
}

// printJSON writes one JSON line to stdout.
func printJSON(v any) {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
}

// fileNetNSClient replaces sendfd in -without-fd mode: it names the netns by a path (which only works on
// one host) instead of passing it as an fd. The sdk's nsmgr accepts that; strict mode must not.
type fileNetNSClient struct{ url string }

func (f *fileNetNSClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	for _, m := range append(req.GetMechanismPreferences(), req.GetConnection().GetMechanism()) {
		if mech := kernel.ToMechanism(m); mech != nil {
			mech.SetNetNSURL(f.url)
		}
	}
	return next.Client(ctx).Request(ctx, req, opts...)
}

func (f *fileNetNSClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*empty.Empty, error) {
	if mech := kernel.ToMechanism(conn.GetMechanism()); mech != nil {
		mech.SetNetNSURL(f.url)
	}
	return next.Client(ctx).Close(ctx, conn, opts...)
}
