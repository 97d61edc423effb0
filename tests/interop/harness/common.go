package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v4"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/networkservicemesh/sdk/pkg/tools/grpcutils"
	"github.com/networkservicemesh/sdk/pkg/tools/log"
	"github.com/networkservicemesh/sdk/pkg/tools/log/logruslogger"
	"github.com/networkservicemesh/sdk/pkg/tools/token"
)

// tokenGenerator makes HS256 test tokens like the sdk sandbox does: under authorize.Any() nobody verifies
// them, but their expiry drives the real timeout, refresh and registry expiry logic.
func tokenGenerator(subject string, lifetime time.Duration) token.GeneratorFunc {
	return func(_ credentials.AuthInfo) (string, time.Time, error) {
		expires := time.Now().Add(lifetime)
		claims := jwt.RegisteredClaims{Subject: "spiffe://harness.local/" + subject, ExpiresAt: jwt.NewNumericDate(expires)}
		signed, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte("harness"))
		return signed, expires, err
	}
}

// insecurePerRPC lets the token credentials travel over a connection without TLS: grpc refuses
// credentials that require transport security otherwise.
type insecurePerRPC struct{ credentials.PerRPCCredentials }

func (insecurePerRPC) RequireTransportSecurity() bool { return false }

// serve starts a grpc server with grpcfd transport credentials (over mTLS when secure) on a unix URL.
func serve(ctx context.Context, u *url.URL, sec *security, register func(*grpc.Server)) error {
	server := grpc.NewServer(sec.serverCreds())
	register(server)
	errCh := grpcutils.ListenAndServe(ctx, u, server)
	select {
	case err := <-errCh:
		return fmt.Errorf("serving %s: %w", u, err)
	default:
	}
	go func() {
		if err := <-errCh; err != nil {
			logrus.Errorf("server on %s stopped: %v", u, err)
		}
	}()
	return nil
}

// commonFlags are shared by all subcommands.
type commonFlags struct {
	logLevel      string
	spiffe        bool
	spiffeTimeout time.Duration
}

func (c *commonFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.logLevel, "log-level", "info", "logrus level; 'trace' also turns on the sdk's chain tracing")
	fs.BoolVar(&c.spiffe, "spiffe", false, "secure mode as in the cmd-* apps: X.509-SVID from the Workload API at "+
		"SPIFFE_ENDPOINT_SOCKET, mTLS, ES256 path tokens, the sdk's default authorization policies")
	fs.DurationVar(&c.spiffeTimeout, "spiffe-timeout", 30*time.Second, "how long to wait for the first X.509-SVID")
}

// security sets up one component's security (see newSecurity).
func (c *commonFlags) security(ctx context.Context, component string, lifetime time.Duration) (*security, error) {
	return newSecurity(ctx, c.spiffe, component, lifetime, c.spiffeTimeout)
}

// setup returns a context cancelled on SIGTERM/SIGINT that carries a logrus logger for the sdk.
func (c *commonFlags) setup(component string) (context.Context, context.CancelFunc, error) {
	level, err := logrus.ParseLevel(c.logLevel)
	if err != nil {
		return nil, nil, err
	}
	logrus.SetLevel(level)
	logrus.SetOutput(os.Stderr)
	log.EnableTracing(level == logrus.TraceLevel)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	ctx = log.WithLog(ctx, logruslogger.New(ctx, logrus.Fields{"cmd": component}))
	return ctx, cancel, nil
}

func parseUnixURL(flagName, value string) (*url.URL, error) {
	u, err := url.Parse(value)
	if err != nil || u.Scheme != "unix" || u.Path == "" {
		return nil, fmt.Errorf("-%s must be unix:///absolute/path, got %q", flagName, value)
	}
	return u, nil
}

// writeFileAtomic writes data so that a reader polling for the file never sees it half-written.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err = tmp.Write(data); err == nil {
		err = tmp.Close()
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// protoJSON renders a message as a JSON object (proto field names, as the Python side sees them).
func protoJSON(m proto.Message) json.RawMessage {
	data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return json.RawMessage(`null`)
	}
	return data
}

// eventLog appends one JSON object per line; tests read it to see what the control plane did.
type eventLog struct {
	mu   sync.Mutex
	file *os.File
}

func openEventLog(path string) (*eventLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &eventLog{file: f}, nil
}

func (e *eventLog) emit(event string, fields map[string]any) {
	if e == nil {
		return
	}
	record := map[string]any{"event": event, "time": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range fields {
		record[k] = v
	}
	line, err := json.Marshal(record)
	if err != nil {
		logrus.Errorf("event %s: %v", event, err)
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	_, _ = e.file.Write(append(line, '\n'))
}
