package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/golang/protobuf/ptypes/empty"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/common"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"
	"github.com/networkservicemesh/api/pkg/api/registry"

	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
)

// Strict mode proves that real fd passing happens. Without it the sdk silently accepts file:// netns
// URLs (its recvfd elements pass them through and sendfd opens the path itself), which only works because
// everything shares one host. With it:
//   - the nsmgr front refuses a Request/Close whose KERNEL netns URL is not inode:// or whose fd never
//     arrived on the caller's connection;
//   - the nsmgr front refuses an endpoint registration whose URL is not inode:// with the socket file's fd;
//   - the forwarder refuses an endpoint reply whose netns was not received as an fd.

// fdWait bounds how long strict mode waits for an fd named by an inode:// URL. grpcfd delivers fds with
// the bytes of the call (or earlier on the same connection), so a short wait is plenty.
const fdWait = 2 * time.Second

// awaitFD checks that the fd named by an inode:// URL arrived on the connection the call came in on.
func awaitFD(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "inode" {
		return fmt.Errorf("URL %q is not inode://<dev>/<ino>", rawURL)
	}
	recv, ok := grpcfd.FromContext(ctx)
	if !ok {
		return fmt.Errorf("the connection carrying %s cannot pass fds", rawURL)
	}
	files, err := recv.RecvFileByURL(rawURL)
	if err != nil {
		return fmt.Errorf("bad inode URL %s: %w", rawURL, err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, fdWait)
	defer cancel()
	select {
	case file, ok := <-files:
		if !ok || file == nil {
			return fmt.Errorf("connection closed before the fd for %s arrived", rawURL)
		}
		return file.Close() // a dup: grpcfd keeps its own copy for the chain
	case <-waitCtx.Done():
		return fmt.Errorf("no fd for %s arrived within %s", rawURL, fdWait)
	}
}

// netnsURLs lists the netns URL of every KERNEL mechanism; a KERNEL mechanism without one is an error.
func netnsURLs(mechs ...*networkservice.Mechanism) ([]string, error) {
	var urls []string
	for _, m := range mechs {
		if m == nil {
			continue
		}
		if u, ok := m.GetParameters()[common.InodeURL]; ok {
			urls = append(urls, u)
		} else if m.GetType() == kernel.MECHANISM {
			return nil, fmt.Errorf("KERNEL mechanism without %q parameter", common.InodeURL)
		}
	}
	return urls, nil
}

func strictCheck(ctx context.Context, mechs ...*networkservice.Mechanism) error {
	urls, err := netnsURLs(mechs...)
	for _, u := range urls {
		if err != nil {
			break
		}
		err = awaitFD(ctx, u)
	}
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "strict fd passing: %v", err)
	}
	return nil
}

// frontServer sits in front of the nsmgr's NetworkService: strict checks, and an event per call with
// the Connection exactly as the nsmgr returned it to the client.
type frontServer struct {
	nsmgr  networkservice.NetworkServiceServer
	strict bool
	events *eventLog
}

func (f *frontServer) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	if f.strict {
		mechs := append([]*networkservice.Mechanism{req.GetConnection().GetMechanism()}, req.GetMechanismPreferences()...)
		if err := strictCheck(ctx, mechs...); err != nil {
			f.events.emit("strict.rejected", map[string]any{"call": "Request", "reason": err.Error(), "request": protoJSON(req)})
			return nil, err
		}
	}
	id, sent := req.GetConnection().GetId(), protoJSON(req) // the nsmgr's chain edits the request in place
	conn, err := f.nsmgr.Request(ctx, req)
	if err != nil {
		f.events.emit("nsmgr.request_failed", map[string]any{"id": id, "request": sent, "error": err.Error()})
		return nil, err
	}
	f.events.emit("nsmgr.request", map[string]any{"id": conn.GetId(), "request": sent, "connection": protoJSON(conn)})
	return conn, nil
}

func (f *frontServer) Close(ctx context.Context, conn *networkservice.Connection) (*empty.Empty, error) {
	if f.strict {
		if err := strictCheck(ctx, conn.GetMechanism()); err != nil {
			f.events.emit("strict.rejected", map[string]any{"call": "Close", "reason": err.Error(), "connection": protoJSON(conn)})
			return nil, err
		}
	}
	fields := map[string]any{"id": conn.GetId(), "connection": protoJSON(conn)}
	rv, err := f.nsmgr.Close(ctx, conn)
	if err != nil {
		fields["error"] = err.Error()
	}
	f.events.emit("nsmgr.close", fields)
	return rv, err
}

// frontNSERegistry sits in front of the nsmgr's endpoint registry: endpoints must hand over their socket
// as inode:// plus the socket file's fd (in strict mode), and every registration is logged.
type frontNSERegistry struct {
	registry.NetworkServiceEndpointRegistryServer
	strict bool
	events *eventLog
}

func (f *frontNSERegistry) Register(ctx context.Context, nse *registry.NetworkServiceEndpoint) (*registry.NetworkServiceEndpoint, error) {
	if f.strict {
		if err := awaitFD(ctx, nse.GetUrl()); err != nil {
			err = status.Errorf(codes.InvalidArgument, "strict fd passing: endpoint %s: %v", nse.GetName(), err)
			f.events.emit("strict.rejected", map[string]any{"call": "Register", "reason": err.Error(), "nse": protoJSON(nse)})
			return nil, err
		}
	}
	sent := protoJSON(nse)
	reply, err := f.NetworkServiceEndpointRegistryServer.Register(ctx, nse)
	if err != nil {
		f.events.emit("registry.register_failed", map[string]any{"name": nse.GetName(), "error": err.Error(), "nse": sent})
		return nil, err
	}
	f.events.emit("registry.register", map[string]any{"name": nse.GetName(), "nse": sent, "reply": protoJSON(reply)})
	return reply, nil
}

func (f *frontNSERegistry) Unregister(ctx context.Context, nse *registry.NetworkServiceEndpoint) (*empty.Empty, error) {
	rv, err := f.NetworkServiceEndpointRegistryServer.Unregister(ctx, nse)
	fields := map[string]any{"name": nse.GetName()}
	if err != nil {
		fields["error"] = err.Error()
	}
	f.events.emit("registry.unregister", fields)
	return rv, err
}

// strictReplyClient sits in the forwarder's client chain just above recvfd.NewClient, so on the way back
// it sees the endpoint's netns URL after recvfd: only a received fd has become /proc/<our pid>/fd/N.
type strictReplyClient struct{ events *eventLog }

func (s *strictReplyClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	conn, err := next.Client(ctx).Request(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	got := conn.GetMechanism().GetParameters()[common.InodeURL]
	if !strings.HasPrefix(got, fmt.Sprintf("file:///proc/%d/fd/", os.Getpid())) {
		reason := fmt.Sprintf("strict fd passing: endpoint %s answered with netns URL %q, not inode:// with an fd",
			conn.GetNetworkServiceEndpointName(), got)
		s.events.emit("strict.rejected", map[string]any{"call": "endpoint reply", "reason": reason, "connection": protoJSON(conn)})
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_, _ = next.Client(ctx).Close(closeCtx, conn, opts...)
		return nil, status.Error(codes.InvalidArgument, reason)
	}
	return conn, nil
}

func (s *strictReplyClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*empty.Empty, error) {
	return next.Client(ctx).Close(ctx, conn, opts...)
}

// observeClient sits at the bottom of the forwarder's client chain, next to the wire: it records what
// the forwarder sent to the endpoint and the endpoint's raw reply (netns URL still inode://).
type observeClient struct{ events *eventLog }

func (o *observeClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	sent := protoJSON(req)
	conn, err := next.Client(ctx).Request(ctx, req, opts...)
	if err != nil {
		o.events.emit("endpoint.request_failed", map[string]any{"request": sent, "error": err.Error()})
		return nil, err
	}
	o.events.emit("endpoint.reply", map[string]any{"request": sent, "connection": protoJSON(conn)})
	return conn, nil
}

func (o *observeClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*empty.Empty, error) {
	rv, err := next.Client(ctx).Close(ctx, conn, opts...)
	fields := map[string]any{"connection": protoJSON(conn)}
	if err != nil {
		fields["error"] = err.Error()
	}
	o.events.emit("endpoint.close", fields)
	return rv, err
}

// frontNSRegistry records NetworkService registrations that come through the nsmgr.
type frontNSRegistry struct {
	registry.NetworkServiceRegistryServer
	events *eventLog
}

func (f *frontNSRegistry) Register(ctx context.Context, ns *registry.NetworkService) (*registry.NetworkService, error) {
	sent := protoJSON(ns)
	reply, err := f.NetworkServiceRegistryServer.Register(ctx, ns)
	fields := map[string]any{"name": ns.GetName(), "ns": sent}
	if err != nil {
		fields["error"] = err.Error()
	} else {
		fields["reply"] = protoJSON(reply)
	}
	f.events.emit("registry.register_ns", fields)
	return reply, err
}
