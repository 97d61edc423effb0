package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/golang/protobuf/ptypes/empty"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"

	"github.com/networkservicemesh/sdk-kernel/pkg/kernel/tools/nshandle"

	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
	"github.com/networkservicemesh/sdk/pkg/networkservice/utils/metadata"
)

// The veth element is the project's own kernel mechanism for the forwarder: one veth pair per connection,
// each end born directly in its namespace under its final name (so eth1 <-> eth1 works), addressed
// afterwards by sdk-kernel's connectioncontextkernel elements.
//
// It has two halves that share the forwarder's per-connection metadata:
//   - the server half (forwarder server chain) remembers the client side: the netns the nsmgr passed as an
//     fd and the mechanism's `name` (vethReleaseServer deletes the pair on Close);
//   - the client half (forwarder client chain) runs when the endpoint has answered: it now knows the
//     endpoint's netns (received as an fd) and interface name, and creates the pair.

type vethKey struct{}

// vethSide is one end of the pair.
type vethSide struct {
	netns  netns.NsHandle // our own dup: stays valid after recvfd closes its file
	ifname string
	alias  string
}

// vethState is kept per connection in the server half's metadata.
type vethState struct {
	client  vethSide
	created bool
	events  *eventLog
	connID  string
}

func (s *vethState) closeNetNS() {
	if s.client.netns.IsOpen() {
		_ = s.client.netns.Close()
	}
}

type vethServer struct{ events *eventLog }

func newVethServer(events *eventLog) networkservice.NetworkServiceServer {
	return &vethServer{events: events}
}

func (v *vethServer) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	mech := kernel.ToMechanism(req.GetConnection().GetMechanism())
	if mech == nil {
		return nil, fmt.Errorf("veth forwarder supports only KERNEL, got %q", req.GetConnection().GetMechanism().GetType())
	}
	md := metadata.Map(ctx, false)
	state, loaded := md.Load(vethKey{})
	if !loaded {
		handle, err := nshandle.FromURL(mech.GetNetNSURL())
		if err != nil {
			return nil, fmt.Errorf("client netns %q: %w", mech.GetNetNSURL(), err)
		}
		state = &vethState{
			client: vethSide{
				netns:  handle,
				ifname: mech.GetInterfaceName(),
				alias:  "server-" + req.GetConnection().GetPath().GetPathSegments()[0].GetId(),
			},
			events: v.events,
			connID: req.GetConnection().GetId(),
		}
		md.Store(vethKey{}, state)
	}
	conn, err := next.Server(ctx).Request(ctx, req)
	if err != nil && !loaded {
		s := state.(*vethState)
		s.remove("request failed")
		s.closeNetNS()
		md.Delete(vethKey{})
	}
	return conn, err
}

func (v *vethServer) Close(ctx context.Context, conn *networkservice.Connection) (*empty.Empty, error) {
	return next.Server(ctx).Close(ctx, conn) // vethReleaseServer deletes the pair
}

// vethReleaseServer deletes the pair on Close. It sits first in the forwarder's own elements, above
// recvfd: a Close can fail in recvfd (e.g. the nsmgr's netsvcmonitor closes a connection whose client fd
// is gone after failed refreshes) and would then never reach the elements below, while the metadata that
// holds the pair is already gone. The pair needs no fd to be deleted: the server half keeps its own netns
// handle.
type vethReleaseServer struct{ events *eventLog }

func newVethReleaseServer(events *eventLog) networkservice.NetworkServiceServer {
	return &vethReleaseServer{events: events}
}

func (v *vethReleaseServer) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	return next.Server(ctx).Request(ctx, req)
}

func (v *vethReleaseServer) Close(ctx context.Context, conn *networkservice.Connection) (*empty.Empty, error) {
	rv, err := next.Server(ctx).Close(ctx, conn)
	state, ok := metadata.Map(ctx, false).LoadAndDelete(vethKey{})
	fields := map[string]any{"conn": conn.GetId(), "known": ok}
	if err != nil {
		fields["error"] = err.Error()
	}
	v.events.emit("forwarder.close", fields)
	if ok {
		s := state.(*vethState)
		s.remove("close")
		s.closeNetNS()
	}
	return rv, err
}

// remove deletes the pair through its client end; deleting one end of a veth deletes both.
func (s *vethState) remove(why string) {
	if !s.created {
		return
	}
	err := withHandle(s.client.netns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(s.client.ifname)
		if err != nil {
			var notFound netlink.LinkNotFoundError
			if errors.As(err, &notFound) {
				return nil // its netns (or the peer's) is gone, and the pair with it
			}
			return err
		}
		return h.LinkDel(link)
	})
	fields := map[string]any{"conn": s.connID, "client_if": s.client.ifname, "why": why}
	if err != nil {
		fields["error"] = err.Error()
	}
	s.events.emit("veth.deleted", fields)
	s.created = false
}

type vethClient struct{}

func newVethClient() networkservice.NetworkServiceClient { return &vethClient{} }

func (v *vethClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	conn, err := next.Client(ctx).Request(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	value, ok := metadata.Map(ctx, false).Load(vethKey{})
	if !ok {
		return nil, errors.New("veth client half without server half: check the forwarder chain")
	}
	state := value.(*vethState)
	mech := kernel.ToMechanism(conn.GetMechanism())
	if mech == nil {
		return nil, fmt.Errorf("endpoint chose %q, the veth forwarder needs KERNEL", conn.GetMechanism().GetType())
	}
	endpointNS, err := nshandle.FromURL(mech.GetNetNSURL())
	if err != nil {
		return nil, fmt.Errorf("endpoint netns %q: %w", mech.GetNetNSURL(), err)
	}
	defer func() { _ = endpointNS.Close() }()
	endpoint := vethSide{netns: endpointNS, ifname: mech.GetInterfaceName(), alias: "client-" + conn.GetPath().GetPathSegments()[0].GetId()}
	if err := state.ensure(endpoint); err != nil {
		return nil, err
	}
	return conn, nil
}

func (v *vethClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*empty.Empty, error) {
	return next.Client(ctx).Close(ctx, conn, opts...)
}

// ensure creates the pair unless a refresh finds it already there. A pair this connection made earlier
// (recognised by its alias) is adopted even if the forwarder lost track of it, e.g. after a Close that
// failed half-way; an interface of that name with another alias is someone else's.
func (s *vethState) ensure(endpoint vethSide) error {
	var alias string
	found := withHandle(s.client.netns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(s.client.ifname)
		if err == nil {
			alias = link.Attrs().Alias
		}
		return err
	}) == nil
	switch {
	case found && alias == s.client.alias:
		s.created = true
		return nil
	case found:
		return fmt.Errorf("interface %s already exists in the client's netns (alias %q)", s.client.ifname, alias)
	}
	s.created = false
	if len(s.client.ifname) > kernel.LinuxIfMaxLength || len(endpoint.ifname) > kernel.LinuxIfMaxLength {
		return fmt.Errorf("interface names %q/%q: longer than %d", s.client.ifname, endpoint.ifname, kernel.LinuxIfMaxLength)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.client.ifname
	attrs.Namespace = netlink.NsFd(s.client.netns)
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: endpoint.ifname, PeerNamespace: netlink.NsFd(endpoint.netns)}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s <-> %s: %w", s.client.ifname, endpoint.ifname, err)
	}
	s.created = true
	for _, side := range []vethSide{s.client, endpoint} {
		if err := setUpWithAlias(side); err != nil {
			s.remove("setup failed")
			return err
		}
	}
	s.events.emit("veth.created", map[string]any{
		"conn": s.connID, "client_if": s.client.ifname, "endpoint_if": endpoint.ifname,
		"client_netns_ino": inode(s.client.netns), "endpoint_netns_ino": inode(endpoint.netns),
	})
	return nil
}

func setUpWithAlias(side vethSide) error {
	return withHandle(side.netns, func(h *netlink.Handle) error {
		link, err := h.LinkByName(side.ifname)
		if err != nil {
			return fmt.Errorf("new veth end %s: %w", side.ifname, err)
		}
		if err := h.LinkSetAlias(link, side.alias); err != nil {
			return fmt.Errorf("alias on %s: %w", side.ifname, err)
		}
		return h.LinkSetUp(link)
	})
}

func withHandle(ns netns.NsHandle, f func(*netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in netns: %w", err)
	}
	defer h.Close()
	return f(h)
}

func inode(ns netns.NsHandle) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return 0
	}
	return st.Ino
}
