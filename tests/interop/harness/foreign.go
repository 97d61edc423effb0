package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"

	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/chain"
	"github.com/networkservicemesh/sdk/pkg/tools/grpcutils"
)

// runForeign is what a workload can do to a connection it does not own: with its own identity (in a
// secure lab, another SPIFFE id than the client's), it reads the connection's path from the nsmgr's
// MonitorConnections (an empty selector matches every connection) and then sends a Close or a refresh
// Request for it, carrying the owner's path ids but its own token and, for a refresh, its own netns.
// It prints one JSON line per step: {"step": "found"|"close"|"refresh", "error": ..., "connection": ...}.
// Exit code 0 even if the nsmgr refuses: the test reads the lines.
func runForeign(args []string) error {
	fs := flag.NewFlagSet("foreign", flag.ContinueOnError)
	var common commonFlags
	common.bind(fs)
	connectTo := fs.String("connect-to", "", "nsmgr URL, unix:///path")
	connID := fs.String("conn-id", "", "id of the client's path segment (the connection id the owner chose, e.g. nsc-1-0)")
	op := fs.String("op", "close", "close | refresh | none (only look the connection up)")
	tokenLifetime := fs.Duration("token-lifetime", 10*time.Minute, "lifetime of our token")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of each call")
	clientSegmentOnly := fs.Bool("client-segment-only", false, "send only the client's path segment (its id is "+
		"guessable, e.g. nsc-1-0), not the nsmgr's (a UUID the monitor reveals)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	nsmgrURL, err := parseUnixURL("connect-to", *connectTo)
	if err != nil {
		return err
	}
	if *connID == "" {
		return fmt.Errorf("-conn-id is required")
	}
	ctx, cancel, err := common.setup("foreign")
	if err != nil {
		return err
	}
	defer cancel()
	sec, err := common.security(ctx, "foreign", *tokenLifetime)
	if err != nil {
		return err
	}
	cc, err := grpc.NewClient(grpcutils.URLToTarget(nsmgrURL), sec.dialOptions()...)
	if err != nil {
		return err
	}
	defer func() { _ = cc.Close() }()

	conn, err := lookUpConnection(ctx, cc, *connID, *timeout)
	if err != nil {
		printJSON(map[string]any{"step": "found", "error": err.Error()})
		return nil
	}
	printJSON(map[string]any{"step": "found", "connection": protoJSON(conn)})

	// the owner's view: index 0, the connection id is the client's segment id
	conn.Path.Index = 0
	conn.Id = conn.GetPath().GetPathSegments()[0].GetId()
	if *clientSegmentOnly {
		conn.Path.PathSegments = conn.GetPath().GetPathSegments()[:1]
	}
	// our own netns, passed as an fd like any client does (strict mode would refuse the call otherwise)
	if mech := kernel.ToMechanism(conn.GetMechanism()); mech != nil {
		mech.SetNetNSURL(fmt.Sprintf("file:///proc/%d/ns/net", os.Getpid()))
	}
	client := chain.NewNetworkServiceClient(sendfd.NewClient(), networkservice.NewNetworkServiceClient(cc))
	callCtx, callCancel := context.WithTimeout(ctx, *timeout)
	defer callCancel()
	result := map[string]any{"step": *op}
	switch *op {
	case "none":
		return nil
	case "close":
		_, err = client.Close(callCtx, conn)
	case "refresh":
		var reply *networkservice.Connection
		request := &networkservice.NetworkServiceRequest{
			Connection:           conn,
			MechanismPreferences: []*networkservice.Mechanism{proto.Clone(conn.GetMechanism()).(*networkservice.Mechanism)},
		}
		if reply, err = client.Request(callCtx, request); err == nil {
			result["connection"] = protoJSON(reply)
		}
	default:
		return fmt.Errorf("-op must be close, refresh or none, got %q", *op)
	}
	if err != nil {
		result["error"] = err.Error()
	}
	printJSON(result)
	return nil
}

// lookUpConnection finds the connection whose first path segment has the given id in the initial state
// the nsmgr's MonitorConnections sends.
func lookUpConnection(ctx context.Context, cc grpc.ClientConnInterface, connID string, timeout time.Duration) (*networkservice.Connection, error) {
	monitorCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := networkservice.NewMonitorConnectionClient(cc).MonitorConnections(monitorCtx, &networkservice.MonitorScopeSelector{})
	if err != nil {
		return nil, fmt.Errorf("MonitorConnections: %w", err)
	}
	event, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("MonitorConnections: %w", err)
	}
	for _, conn := range event.GetConnections() {
		if segments := conn.GetPath().GetPathSegments(); len(segments) > 1 && segments[0].GetId() == connID {
			return conn, nil
		}
	}
	return nil, fmt.Errorf("no connection with client segment id %q among %d", connID, len(event.GetConnections()))
}
