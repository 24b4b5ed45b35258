#!/usr/bin/env python3
"""A compute driver written with grpcio, serving the contract on a Unix socket.

It plays "the real driver" behind the bridge's relay in the interop tests
(tests/interop.rs), so that what the bridge carries is produced and consumed
by a gRPC stack other than its own (grpcio's C core instead of hyper/tonic):

    python3 tests/interop/driver.py /path/to/driver.sock [--stubs DIR]

- GetCapabilities answers driver_name "python-grpcio".
- Create/List/Get/Delete keep sandboxes in memory; GetSandbox of an unknown
  sandbox fails NOT_FOUND with a message and trailing metadata (one text and
  one binary entry).
- Every call echoes the caller's `x-interop*` metadata as trailing metadata.
- WatchSandboxes sends a snapshot of every current sandbox, then three live
  platform events (each its own message, a little apart), then one sandbox
  event per sandbox created while it is open, until the caller cancels it;
  it then prints a line saying so.

The server keeps grpcio's default options, so its keepalive enforcement is
C-core's: a client may ping at most once per 5 minutes while no data flows,
and the third ping too many gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings".

Prints "ready" on stdout once serving. Stops on SIGTERM/SIGINT or after
--max-seconds, so a forgotten process never outlives a test run by much.
"""

import argparse
import os
import queue
import signal
import stat
import sys
import threading
import time
from concurrent import futures

sys.dont_write_bytecode = True  # keep tests/interop free of __pycache__

import grpc  # noqa: E402

import stubs  # noqa: E402

DRIVER_NAME = "python-grpcio"
ECHO_PREFIX = "x-interop"
# Sent with NOT_FOUND, so a gateway can check that error trailers cross intact.
NOT_FOUND_TRAILERS = (
    ("x-driver", DRIVER_NAME),
    ("x-driver-detail-bin", b"\x00\x01\xfe\xff not found"),
)
LIVE_EVENTS = ("Pulling", "Pulled", "Started")
LIVE_EVENT_GAP = 0.05


def log(line):
    print(line, flush=True)


def not_found_message(sandbox_id, sandbox_name):
    who = sandbox_id or f"named {sandbox_name}"
    return f"sandbox {who} not found by the {DRIVER_NAME} driver"


def make_servicer(pb2, pb2_grpc):
    class Driver(pb2_grpc.ComputeDriverServicer):
        def __init__(self):
            self._lock = threading.Lock()
            self._sandboxes = {}
            self._instances = 0
            # One queue per open watch: sandboxes created while it is open.
            self._watches = set()

        # -- helpers -----------------------------------------------------

        @staticmethod
        def _trailers(context, *extra):
            echoed = [
                (key, value)
                for key, value in context.invocation_metadata()
                if key.startswith(ECHO_PREFIX)
            ]
            if echoed or extra:
                context.set_trailing_metadata(tuple(echoed) + tuple(extra))

        def _find(self, sandbox_id, sandbox_name):
            if sandbox_id:
                return self._sandboxes.get(sandbox_id)
            for sandbox in self._sandboxes.values():
                if sandbox_name and sandbox.name == sandbox_name:
                    return sandbox
            return None

        # -- the contract ------------------------------------------------

        def GetCapabilities(self, request, context):
            self._trailers(context)
            return pb2.GetCapabilitiesResponse(
                driver_name=DRIVER_NAME,
                driver_version=grpc.__version__,
                default_image="openshell/sandbox:latest",
                gateway_manages_lifecycle=True,
            )

        def GetGatewayListenerRequirements(self, request, context):
            self._trailers(context)
            return pb2.GetGatewayListenerRequirementsResponse(
                requirements=[
                    pb2.GatewayListenerRequirement(
                        reason="python driver runs sandboxes on this host",
                        loopback_interface=pb2.GatewayLoopbackInterfaceRequirement(),
                    )
                ]
            )

        def ValidateSandboxCreate(self, request, context):
            self._trailers(context)
            with self._lock:
                self._check_create(request.sandbox, context)
            return pb2.ValidateSandboxCreateResponse()

        def _check_create(self, sandbox, context):
            if not sandbox.id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sandbox.id is required")
            if sandbox.id in self._sandboxes:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"sandbox {sandbox.id} already exists"
                )

        def CreateSandbox(self, request, context):
            self._trailers(context)
            with self._lock:
                self._check_create(request.sandbox, context)
                self._instances += 1
                stored = pb2.DriverSandbox()
                stored.CopyFrom(request.sandbox)
                stored.spec.sandbox_token = ""  # a credential: never echoed back
                stored.status.sandbox_name = stored.name
                stored.status.instance_id = f"python-{self._instances}"
                stored.status.conditions.append(
                    pb2.DriverCondition(
                        type="Ready",
                        status="True",
                        reason="Running",
                        message="sandbox is running",
                    )
                )
                self._sandboxes[stored.id] = stored
                for watch in self._watches:
                    watch.put(stored)
            log(f"created {stored.id}")
            return pb2.CreateSandboxResponse()

        def GetSandbox(self, request, context):
            with self._lock:
                found = self._find(request.sandbox_id, request.sandbox_name)
            if found is None:
                self._trailers(context, *NOT_FOUND_TRAILERS)
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    not_found_message(request.sandbox_id, request.sandbox_name),
                )
            self._trailers(context)
            return pb2.GetSandboxResponse(sandbox=found)

        def ListSandboxes(self, request, context):
            self._trailers(context)
            with self._lock:
                sandboxes = [self._sandboxes[key] for key in sorted(self._sandboxes)]
            return pb2.ListSandboxesResponse(sandboxes=sandboxes)

        def StopSandbox(self, request, context):
            return self._exists(request, context, pb2.StopSandboxResponse())

        def StartSandbox(self, request, context):
            return self._exists(request, context, pb2.StartSandboxResponse())

        def _exists(self, request, context, response):
            with self._lock:
                found = self._find(request.sandbox_id, request.sandbox_name)
            if found is None:
                self._trailers(context, *NOT_FOUND_TRAILERS)
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    not_found_message(request.sandbox_id, request.sandbox_name),
                )
            self._trailers(context)
            return response

        def DeleteSandbox(self, request, context):
            self._trailers(context)
            with self._lock:
                found = self._find(request.sandbox_id, request.sandbox_name)
                if found is not None:
                    del self._sandboxes[found.id]
            return pb2.DeleteSandboxResponse(deleted=found is not None)

        def WatchSandboxes(self, request, context):
            self._trailers(context)
            ended = threading.Event()
            context.add_callback(ended.set)
            created = queue.Queue()
            with self._lock:
                snapshot = [self._sandboxes[key] for key in sorted(self._sandboxes)]
                self._watches.add(created)
            try:
                yield from self._watch(snapshot, created, ended, context)
            finally:
                with self._lock:
                    self._watches.discard(created)

        def _watch(self, snapshot, created, ended, context):
            for sandbox in snapshot:
                yield pb2.WatchSandboxesEvent(
                    sandbox=pb2.WatchSandboxesSandboxEvent(sandbox=sandbox)
                )
            subject = snapshot[0].id if snapshot else ""
            for reason in LIVE_EVENTS:
                # Apart in time, so each event crosses as its own HTTP/2 frame.
                if ended.wait(LIVE_EVENT_GAP):
                    break
                yield pb2.WatchSandboxesEvent(
                    platform_event=pb2.WatchSandboxesPlatformEvent(
                        sandbox_id=subject,
                        event=pb2.DriverPlatformEvent(
                            timestamp_ms=int(time.time() * 1000),
                            source=DRIVER_NAME,
                            type="Normal",
                            reason=reason,
                            message=f"live event {reason}",
                            metadata={"driver": DRIVER_NAME},
                        ),
                    )
                )
            # Open until the caller goes away (or the server stops), with an
            # event for every sandbox created meanwhile.
            while not ended.is_set() and context.is_active():
                try:
                    sandbox = created.get(timeout=0.5)
                except queue.Empty:
                    continue
                yield pb2.WatchSandboxesEvent(
                    sandbox=pb2.WatchSandboxesSandboxEvent(sandbox=sandbox)
                )
            log("WatchSandboxes cancelled by the caller")

        def EnsureWorkspace(self, request, context):
            self._trailers(context)
            if not request.workspace:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "workspace is required")
            return pb2.EnsureWorkspaceResponse()

        def DeleteWorkspace(self, request, context):
            self._trailers(context)
            return pb2.DeleteWorkspaceResponse()

    return Driver()


def prepare_socket(path):
    """Creates the socket's directory (0700) and removes a stale socket."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="Unix socket path to serve on")
    parser.add_argument("--stubs", help="directory with the generated stubs (default: generate)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop after this long")
    args = parser.parse_args()

    pb2, pb2_grpc = stubs.load(args.stubs)
    socket_path = os.path.abspath(args.socket)
    prepare_socket(socket_path)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb2_grpc.add_ComputeDriverServicer_to_server(make_servicer(pb2, pb2_grpc), server)
    if server.add_insecure_port(f"unix:{socket_path}") == 0:
        print(f"cannot listen on unix:{socket_path}", file=sys.stderr)
        return 1
    server.start()
    os.chmod(socket_path, 0o600)  # as private as a first-party driver's socket

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log("ready")
    stop.wait(args.max_seconds)
    server.stop(grace=1).wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
