// A compute driver written with grpc-go, serving part of the contract on a
// Unix socket. It plays "the real driver" behind the bridge's relay in the
// interop tests (tests/interop.rs) as a second foreign gRPC stack, next to
// grpcio's C core (tests/interop/driver.py).
//
// Built from Debian's packages alone (golang-go, golang-google-grpc-dev),
// in GOPATH mode, with no generated code and nothing downloaded:
//
//	GOPATH=/usr/share/gocode GO111MODULE=off go build -o driver-go driver.go
//	./driver-go -socket /path/to/driver.sock
//
// Every method of the service reaches one handler (grpc.UnknownServiceHandler)
// and messages cross as raw bytes (a codec registered as "proto" that copies
// bytes): the few messages the driver writes are encoded by hand below.
// The server keeps grpc-go's defaults in every other respect, so its
// keepalive enforcement is the library's: a client may ping at most once per
// 5 minutes, and not at all without an open call; the third ping too many
// gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings".
//
//   - GetCapabilities answers driver_name "go-grpc".
//   - CreateSandbox stores the sandbox (its bytes as sent) and sends it to
//     every open watch as a sandbox event.
//   - ListSandboxes lists the stored sandboxes.
//   - WatchSandboxes sends its headers at once, then one sandbox event per
//     stored sandbox, then one per sandbox created while it is open, until
//     the caller goes away; it then prints "WatchSandboxes ended: <why>".
//   - Any other method: UNIMPLEMENTED naming it.
//
// Prints "ready" on stdout once serving. Stops on SIGTERM/SIGINT or after
// -max-seconds.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

const (
	driverName = "go-grpc"
	service    = "/openshell.compute.v1.ComputeDriver/"
)

// rawCodec carries messages as the bytes on the wire. Registered under
// "proto", the name grpc-go picks for application/grpc, it replaces the
// protobuf codec for this process.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("raw codec cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec cannot unmarshal into %T", v)
	}
	*m = append((*m)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// -- protobuf wire format, the little of it needed ------------------------

func varint(out []byte, v uint64) []byte {
	for v >= 0x80 {
		out = append(out, byte(v)|0x80)
		v >>= 7
	}
	return append(out, byte(v))
}

// bytesField appends field `num` with wire type 2 (string, bytes, message).
func bytesField(out []byte, num int, value []byte) []byte {
	out = varint(out, uint64(num)<<3|2)
	out = varint(out, uint64(len(value)))
	return append(out, value...)
}

// field returns the first wire-type-2 field `num` of a message.
func field(msg []byte, num int) ([]byte, bool) {
	for len(msg) > 0 {
		key, n := readVarint(msg)
		if n == 0 {
			return nil, false
		}
		msg = msg[n:]
		switch key & 7 {
		case 0:
			_, n = readVarint(msg)
			if n == 0 {
				return nil, false
			}
			msg = msg[n:]
		case 1:
			if len(msg) < 8 {
				return nil, false
			}
			msg = msg[8:]
		case 5:
			if len(msg) < 4 {
				return nil, false
			}
			msg = msg[4:]
		case 2:
			length, n := readVarint(msg)
			if n == 0 || uint64(len(msg)-n) < length {
				return nil, false
			}
			value := msg[n : n+int(length)]
			msg = msg[n+int(length):]
			if int(key>>3) == num {
				return value, true
			}
		default:
			return nil, false
		}
	}
	return nil, false
}

func readVarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * uint(i))
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}

// GetCapabilitiesResponse{driver_name=1, driver_version=2, default_image=3,
// gateway_manages_lifecycle=6}.
func capabilities() []byte {
	var out []byte
	out = bytesField(out, 1, []byte(driverName))
	out = bytesField(out, 2, []byte(grpc.Version))
	out = bytesField(out, 3, []byte("openshell/sandbox:latest"))
	out = varint(out, 6<<3|0)
	return varint(out, 1)
}

// WatchSandboxesEvent{sandbox=1: WatchSandboxesSandboxEvent{sandbox=1: s}}.
func sandboxEvent(sandbox []byte) []byte {
	return bytesField(nil, 1, bytesField(nil, 1, sandbox))
}

// -- the driver -------------------------------------------------------------

type driver struct {
	mu        sync.Mutex
	sandboxes map[string][]byte // id -> DriverSandbox bytes
	watches   map[chan []byte]struct{}
}

func (d *driver) handle(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var request []byte
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	switch method {
	case service + "GetCapabilities":
		return stream.SendMsg(capabilities())
	case service + "CreateSandbox":
		return d.create(stream, request)
	case service + "ListSandboxes":
		var out []byte
		for _, sandbox := range d.snapshot() {
			out = bytesField(out, 1, sandbox)
		}
		return stream.SendMsg(out)
	case service + "WatchSandboxes":
		return d.watch(stream)
	}
	return status.Errorf(codes.Unimplemented, "%s is not implemented by the %s driver", method, driverName)
}

func (d *driver) create(stream grpc.ServerStream, request []byte) error {
	sandbox, ok := field(request, 1)
	id, _ := field(sandbox, 1)
	if !ok || len(id) == 0 {
		return status.Error(codes.InvalidArgument, "sandbox.id is required")
	}
	stored := append([]byte(nil), sandbox...)
	d.mu.Lock()
	if _, exists := d.sandboxes[string(id)]; exists {
		d.mu.Unlock()
		return status.Errorf(codes.AlreadyExists, "sandbox %s already exists", id)
	}
	d.sandboxes[string(id)] = stored
	for watch := range d.watches {
		select {
		case watch <- stored:
		default: // a watch that does not keep up misses events; tests read theirs
		}
	}
	d.mu.Unlock()
	fmt.Printf("created %s\n", id)
	return stream.SendMsg([]byte{}) // CreateSandboxResponse{}
}

func (d *driver) snapshot() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.sandboxes))
	for id := range d.sandboxes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([][]byte, 0, len(ids))
	for _, id := range ids {
		out = append(out, d.sandboxes[id])
	}
	return out
}

func (d *driver) watch(stream grpc.ServerStream) error {
	events := make(chan []byte, 64)
	d.mu.Lock()
	d.watches[events] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.watches, events)
		d.mu.Unlock()
	}()
	// Headers now, not with the first event: a watch of an empty driver is
	// open for the caller at once (tonic waits for them).
	if err := stream.SendHeader(nil); err != nil {
		fmt.Printf("WatchSandboxes ended: %v\n", err)
		return err
	}
	fmt.Println("WatchSandboxes opened")
	for _, sandbox := range d.snapshot() {
		if err := stream.SendMsg(sandboxEvent(sandbox)); err != nil {
			fmt.Printf("WatchSandboxes ended: %v\n", err)
			return err
		}
	}
	for {
		select {
		case <-stream.Context().Done():
			fmt.Printf("WatchSandboxes ended: %v\n", stream.Context().Err())
			return stream.Context().Err()
		case sandbox := <-events:
			if err := stream.SendMsg(sandboxEvent(sandbox)); err != nil {
				fmt.Printf("WatchSandboxes ended: %v\n", err)
				return err
			}
		}
	}
}

func main() {
	socket := flag.String("socket", "", "Unix socket path to serve on")
	maxSeconds := flag.Float64("max-seconds", 900, "stop after this long")
	flag.Parse()
	if *socket == "" {
		fmt.Fprintln(os.Stderr, "-socket is required")
		os.Exit(2)
	}
	encoding.RegisterCodec(rawCodec{})

	if err := os.MkdirAll(filepath.Dir(*socket), 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if info, err := os.Lstat(*socket); err == nil && info.Mode()&os.ModeSocket != 0 {
		os.Remove(*socket) // a stale socket of ours
	}
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot listen on %s: %v\n", *socket, err)
		os.Exit(1)
	}
	os.Chmod(*socket, 0o600)

	d := &driver{sandboxes: map[string][]byte{}, watches: map[chan []byte]struct{}{}}
	server := grpc.NewServer(grpc.UnknownServiceHandler(d.handle))
	go func() {
		if err := server.Serve(listener); err != nil {
			fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		}
	}()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("ready")
	select {
	case <-stop:
	case <-time.After(time.Duration(*maxSeconds * float64(time.Second))):
	}
	server.Stop()
}
