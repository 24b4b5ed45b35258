#!/usr/bin/env python3
"""A gateway written with grpcio: a scripted session against a driver socket.

It plays the OpenShell gateway in the interop tests (tests/interop.rs),
dialling the shim's Unix socket with grpcio's C core instead of hyper/tonic:

    python3 tests/interop/gateway.py /path/to/compute-driver.sock \
        --driver python-grpcio|demo [--authority NAME] [--stubs DIR] \
        [--scenario session|outage|idle-watch|lost-hop] [--idle-seconds N]

--driver names what is expected behind the socket: the grpcio driver of
tests/interop/driver.py or the bridge's own demo driver; the session is the
same, only the driver-specific expectations differ. Prints one line per step
("PASS step: ..." or "FAIL step: ...") and exits 0 only when every step
passed. Every call carries a deadline, so the session never hangs.

--scenario picks what the gateway does on its one channel:
- session (default): the scripted session above;
- outage: for a shim whose upstream is down: a first call must fail
  UNAVAILABLE; the gateway then prints "waiting for the upstream", reads a
  line from stdin (the test starts the upstream, then writes one) and runs
  the session on the same channel;
- idle-watch: creates a sandbox, opens WatchSandboxes, sees that sandbox,
  then holds the watch with nothing arriving for --idle-seconds, creates
  another sandbox and must see its event on the same watch;
- lost-hop: opens a watch as above, prints "watch open" and reads a line
  from stdin (the test cuts the shim's next hop, then writes one); the
  watch must end UNAVAILABLE, then GetCapabilities and a new watch on the
  same channel must work.

--authority sets the HTTP/2 :authority through `grpc.default_authority`;
without it grpcio sends its own default, which for a `unix:` target is the
%-encoded socket path (grpc/grpc#38142). The shim accepts either and
rewrites it for the next hop. The channel has no other options: grpcio's
defaults, keepalive included (a C-core client does not ping by default).
"""

import argparse
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass

sys.dont_write_bytecode = True  # keep tests/interop free of __pycache__

import grpc  # noqa: E402

import stubs  # noqa: E402

TIMEOUT = 5.0
WATCH_TIMEOUT = 15.0
IDS = ("interop-a", "interop-b")
UNKNOWN_ID = "interop-ghost"


@dataclass(frozen=True)
class Driver:
    """What a gateway may expect from one driver."""

    name: str
    not_found_message: str
    # Error trailers the driver attaches to NOT_FOUND, as (key, value).
    not_found_trailers: tuple
    echoes_metadata: bool
    # True: live events follow the snapshot on their own. False: the gateway
    # causes them by creating a sandbox while watching.
    spontaneous_live_events: bool


DRIVERS = {
    "python-grpcio": Driver(
        name="python-grpcio",
        not_found_message=f"sandbox {UNKNOWN_ID} not found by the python-grpcio driver",
        not_found_trailers=(
            ("x-driver", "python-grpcio"),
            ("x-driver-detail-bin", b"\x00\x01\xfe\xff not found"),
        ),
        echoes_metadata=True,
        spontaneous_live_events=True,
    ),
    "demo": Driver(
        name="demo",
        not_found_message=f"sandbox {UNKNOWN_ID} not found",
        not_found_trailers=(),
        echoes_metadata=False,
        spontaneous_live_events=False,
    ),
}


class StepFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise StepFailed(message)


def describe(error):
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


class Session:
    def __init__(self, pb2, pb2_grpc, channel, driver):
        self.pb2 = pb2
        self.stub = pb2_grpc.ComputeDriverStub(channel)
        self.driver = driver
        self.passed = 0

    def step(self, name, action):
        started = time.monotonic()
        try:
            detail = action()
        except StepFailed as e:
            print(f"FAIL {name}: {e}", flush=True)
            return False
        except Exception as e:  # noqa: BLE001 - any surprise fails the step
            print(f"FAIL {name}: {describe(e)}", flush=True)
            return False
        took = (time.monotonic() - started) * 1000
        print(f"PASS {name}: {detail} ({took:.0f} ms)", flush=True)
        self.passed += 1
        return True

    def sandbox(self, sandbox_id):
        pb2 = self.pb2
        sandbox = pb2.DriverSandbox(
            id=sandbox_id,
            name=f"name-{sandbox_id}",
            namespace="default",
        )
        sandbox.spec.log_level = "info"
        sandbox.spec.environment["INTEROP"] = "1"
        sandbox.spec.sandbox_token = "not-a-real-token"
        sandbox.spec.command.extend(["sleep", "infinity"])
        template = sandbox.spec.template
        template.image = "openshell/sandbox:latest"
        template.labels["interop"] = "grpcio"
        template.platform_config.update({"zone": "edge", "replicas": 1, "tags": ["a", "b"]})
        return sandbox

    # -- steps -------------------------------------------------------------

    def capabilities(self):
        caps = self.stub.GetCapabilities(self.pb2.GetCapabilitiesRequest(), timeout=TIMEOUT)
        check(
            caps.driver_name == self.driver.name,
            f"driver_name {caps.driver_name!r}, expected {self.driver.name!r}",
        )
        return f"driver_name={caps.driver_name} version={caps.driver_version}"

    def create(self, sandbox_id):
        def action():
            self.stub.CreateSandbox(
                self.pb2.CreateSandboxRequest(sandbox=self.sandbox(sandbox_id)), timeout=TIMEOUT
            )
            return f"created {sandbox_id}"

        return action

    def list_two(self):
        listed = self.stub.ListSandboxes(self.pb2.ListSandboxesRequest(), timeout=TIMEOUT)
        ids = sorted(s.id for s in listed.sandboxes)
        check(ids == sorted(IDS), f"listed {ids}, expected {sorted(IDS)}")
        first = next(s for s in listed.sandboxes if s.id == IDS[0])
        template = first.spec.template
        check(
            template.labels.get("interop") == "grpcio"
            and template.platform_config["zone"] == "edge",
            f"sandbox came back altered: {first}",
        )
        check(not first.spec.sandbox_token, "the driver echoed the sandbox token")
        return f"{len(ids)} sandboxes: {', '.join(ids)}"

    def get_unknown(self):
        try:
            got = self.stub.GetSandbox(
                self.pb2.GetSandboxRequest(sandbox_id=UNKNOWN_ID), timeout=TIMEOUT
            )
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.NOT_FOUND, f"expected NOT_FOUND, got {describe(e)}")
            check(
                e.details() == self.driver.not_found_message,
                f"message {e.details()!r}, expected {self.driver.not_found_message!r}",
            )
            trailers = list(e.trailing_metadata() or ())
            for entry in self.driver.not_found_trailers:
                check(
                    entry in trailers,
                    f"trailing metadata {trailers} lacks {entry}",
                )
            return f"NOT_FOUND {e.details()!r}, trailers {len(self.driver.not_found_trailers)} ok"
        raise StepFailed(f"expected NOT_FOUND, got {got}")

    def metadata_round_trip(self):
        token = f"interop-{uuid.uuid4()}"
        blob = bytes(range(256))
        sent = (("x-interop", token), ("x-interop-bin", blob))
        _, call = self.stub.GetCapabilities.with_call(
            self.pb2.GetCapabilitiesRequest(), metadata=sent, timeout=TIMEOUT
        )
        trailers = list(call.trailing_metadata() or ())
        if not self.driver.echoes_metadata:
            return "custom metadata accepted (this driver does not echo it)"
        for entry in sent:
            check(entry in trailers, f"trailing metadata {trailers} lacks echo of {entry[0]}")
        return "x-interop and x-interop-bin echoed in trailing metadata"

    def watch(self):
        pb2 = self.pb2
        stream = self.stub.WatchSandboxes(pb2.WatchSandboxesRequest(), timeout=WATCH_TIMEOUT)
        try:
            snapshot = [next(stream) for _ in IDS]
            kinds = [event.WhichOneof("payload") for event in snapshot]
            check(kinds == ["sandbox"] * len(IDS), f"snapshot events {kinds}")
            ids = sorted(event.sandbox.sandbox.id for event in snapshot)
            check(ids == sorted(IDS), f"snapshot of {ids}, expected {sorted(IDS)}")

            live = []
            if self.driver.spontaneous_live_events:
                live = [next(stream) for _ in range(3)]
                reasons = [
                    event.platform_event.event.reason
                    for event in live
                    if event.WhichOneof("payload") == "platform_event"
                ]
                check(
                    reasons == ["Pulling", "Pulled", "Started"],
                    f"live events {reasons}",
                )
            else:
                # Cause live events: a sandbox created while watching.
                extra = "interop-live"
                self.stub.CreateSandbox(
                    pb2.CreateSandboxRequest(sandbox=self.sandbox(extra)), timeout=TIMEOUT
                )
                seen_extra = False
                while len(live) < 3 or not seen_extra:
                    event = next(stream)
                    live.append(event)
                    kind = event.WhichOneof("payload")
                    subject = (
                        event.sandbox.sandbox.id
                        if kind == "sandbox"
                        else event.platform_event.sandbox_id
                        if kind == "platform_event"
                        else event.deleted.sandbox_id
                    )
                    seen_extra |= subject == extra
                deleted = self.stub.DeleteSandbox(
                    pb2.DeleteSandboxRequest(sandbox_id=extra), timeout=TIMEOUT
                )
                check(deleted.deleted, f"delete of {extra} reported deleted=false")

            stream.cancel()
            try:
                event = next(stream)
            except grpc.RpcError as e:
                check(
                    e.code() == grpc.StatusCode.CANCELLED,
                    f"after cancel: {describe(e)}, expected CANCELLED",
                )
            else:
                raise StepFailed(f"stream went on after cancel: {event}")
            return f"snapshot of {len(snapshot)}, {len(live)} live events, then cancelled"
        finally:
            stream.cancel()

    def delete_all(self):
        results = {}
        for sandbox_id in IDS:
            deleted = self.stub.DeleteSandbox(
                self.pb2.DeleteSandboxRequest(sandbox_id=sandbox_id), timeout=TIMEOUT
            )
            check(deleted.deleted, f"delete of {sandbox_id} reported deleted=false")
            results[sandbox_id] = deleted.deleted
        again = self.stub.DeleteSandbox(
            self.pb2.DeleteSandboxRequest(sandbox_id=IDS[0]), timeout=TIMEOUT
        )
        check(not again.deleted, f"second delete of {IDS[0]} reported deleted=true")
        return f"deleted {', '.join(results)}; deleting again reports deleted=false"

    def run(self):
        steps = [
            ("GetCapabilities", self.capabilities),
            *((f"CreateSandbox {i}", self.create(i)) for i in IDS),
            ("ListSandboxes", self.list_two),
            ("GetSandbox unknown", self.get_unknown),
            ("metadata round trip", self.metadata_round_trip),
            ("WatchSandboxes", self.watch),
            ("DeleteSandbox", self.delete_all),
        ]
        for name, action in steps:
            if not self.step(name, action):
                return False
        print(f"interop session passed: {self.passed} steps", flush=True)
        return True


def outage(pb2, pb2_grpc, channel, driver):
    """A first call fails UNAVAILABLE; once told the upstream is up, the
    session runs on the same channel."""
    session = Session(pb2, pb2_grpc, channel, driver)

    def first_call():
        try:
            got = session.stub.GetCapabilities(pb2.GetCapabilitiesRequest(), timeout=30.0)
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE, f"expected UNAVAILABLE, got {describe(e)}")
            return f"UNAVAILABLE {e.details()!r}"
        raise StepFailed(f"answered while the upstream was down: {got}")

    if not session.step("GetCapabilities while the upstream is down", first_call):
        return False
    print("waiting for the upstream", flush=True)
    if not sys.stdin.readline():
        print("FAIL outage: stdin closed before the upstream came up", flush=True)
        return False
    return session.run()


class Watch:
    """A WatchSandboxes stream with no deadline (as the gateway holds it),
    read on a thread of its own into a queue of (monotonic time, event, or
    RpcError, or None at the end)."""

    def __init__(self, stub, pb2):
        self.events = queue.Queue()
        self.stream = stub.WatchSandboxes(pb2.WatchSandboxesRequest())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for event in self.stream:
                self.events.put((time.monotonic(), event))
            self.events.put((time.monotonic(), None))
        except grpc.RpcError as e:
            self.events.put((time.monotonic(), e))

    def wait_for(self, sandbox_id, limit):
        """Until the event of sandbox_id; StepFailed if the watch ends first."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"no event for {sandbox_id} within {limit}s")
            try:
                _, item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise StepFailed(f"the watch ended cleanly before {sandbox_id} showed")
            if isinstance(item, grpc.RpcError):
                raise StepFailed(f"the watch ended {describe(item)} before {sandbox_id} showed")
            if item.WhichOneof("payload") == "sandbox" and item.sandbox.sandbox.id == sandbox_id:
                return

    def settle(self):
        """Lets the driver's own first events (the grpcio driver sends three
        live ones right after its snapshot) arrive; how many did."""
        time.sleep(2.0)
        burst = 0
        while not self.events.empty():
            _, item = self.events.get()
            if item is None or isinstance(item, grpc.RpcError):
                raise StepFailed(f"the watch ended right after opening: {item}")
            burst += 1
        return burst

    def end(self, limit):
        """The RpcError the watch ends with within limit (events skipped)."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"the watch did not end within {limit}s")
            try:
                _, item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise StepFailed("the watch ended cleanly, without a status")
            if isinstance(item, grpc.RpcError):
                return item

    def cancel(self):
        self.stream.cancel()


def open_watch_on(session, sandbox_id):
    """Creates sandbox_id, opens a watch, sees it there, lets the first
    events settle; the watch and a line for the step."""
    session.stub.CreateSandbox(
        session.pb2.CreateSandboxRequest(sandbox=session.sandbox(sandbox_id)), timeout=TIMEOUT
    )
    watch = Watch(session.stub, session.pb2)
    watch.wait_for(sandbox_id, WATCH_TIMEOUT)
    return watch, f"snapshot seen, then {watch.settle()} more events"


def idle_watch(pb2, pb2_grpc, channel, idle_seconds):
    """Holds an idle watch for idle_seconds, then needs a new event on it."""
    session = Session(pb2, pb2_grpc, channel, None)
    watch = None

    def open_watch():
        nonlocal watch
        watch, line = open_watch_on(session, "before-idle")
        return line

    def hold():
        started = time.monotonic()
        try:
            at, item = watch.events.get(timeout=idle_seconds)
        except queue.Empty:
            return f"nothing arrived and nothing ended in {idle_seconds}s"
        after = at - started
        if item is None:
            raise StepFailed(f"the watch ended cleanly after {after:.1f}s of idle")
        if isinstance(item, grpc.RpcError):
            raise StepFailed(f"the watch ended {describe(item)} after {after:.1f}s of idle")
        raise StepFailed(f"an unexpected event after {after:.1f}s of idle: {item}")

    def after_idle():
        started = time.monotonic()
        session.stub.CreateSandbox(
            pb2.CreateSandboxRequest(sandbox=session.sandbox("after-idle")), timeout=TIMEOUT
        )
        watch.wait_for("after-idle", WATCH_TIMEOUT)
        took = (time.monotonic() - started) * 1000
        return f"after-idle created and its event delivered on the same watch in {took:.0f} ms"

    try:
        for name, action in (
            ("open watch", open_watch),
            ("idle watch", hold),
            ("event after idle", after_idle),
        ):
            if not session.step(name, action):
                return False
    finally:
        if watch is not None:
            watch.cancel()
    print(f"idle watch passed: {idle_seconds}s", flush=True)
    return True


def lost_hop(pb2, pb2_grpc, channel):
    """Opens a watch; once told the shim's next hop is cut, the watch must
    end UNAVAILABLE, and then calls and a new watch on the same channel
    must work again."""
    session = Session(pb2, pb2_grpc, channel, None)
    watch = None

    def open_watch():
        nonlocal watch
        watch, line = open_watch_on(session, "before-cut")
        return line

    def cut():
        print("watch open", flush=True)
        if not sys.stdin.readline():
            raise StepFailed("stdin closed before the hop was cut")
        started = time.monotonic()
        error = watch.end(WATCH_TIMEOUT)
        check(error.code() == grpc.StatusCode.UNAVAILABLE, f"expected UNAVAILABLE, got {describe(error)}")
        took = (time.monotonic() - started) * 1000
        return f"ended UNAVAILABLE {error.details()!r} {took:.0f} ms after the cut"

    def back():
        nonlocal watch
        watch.cancel()
        got = session.stub.GetCapabilities(pb2.GetCapabilitiesRequest(), timeout=WATCH_TIMEOUT)
        watch, _ = open_watch_on(session, "after-cut")
        return f"GetCapabilities answered ({got.driver_name}), a new watch saw after-cut"

    try:
        for name, action in (("open watch", open_watch), ("hop cut", cut), ("same channel after", back)):
            if not session.step(name, action):
                return False
    finally:
        if watch is not None:
            watch.cancel()
    print("lost hop passed", flush=True)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="the driver socket to dial (the shim's)")
    parser.add_argument("--driver", choices=sorted(DRIVERS), default="python-grpcio")
    parser.add_argument(
        "--authority",
        default="",
        help="the :authority to send (default: grpcio's own, the %%-encoded socket path)",
    )
    parser.add_argument(
        "--scenario", choices=("session", "outage", "idle-watch", "lost-hop"), default="session"
    )
    parser.add_argument("--idle-seconds", type=float, default=130.0)
    parser.add_argument("--stubs", help="directory with the generated stubs (default: generate)")
    args = parser.parse_args()

    pb2, pb2_grpc = stubs.load(args.stubs)
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(f"unix:{args.socket}", options=options) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        except grpc.FutureTimeoutError:
            print(f"FAIL connect: unix:{args.socket} not ready within {TIMEOUT}s", flush=True)
            return 1
        authority = args.authority or "grpcio default (the socket path)"
        print(f"PASS connect: unix:{args.socket}, authority {authority}", flush=True)
        if args.scenario == "outage":
            ok = outage(pb2, pb2_grpc, channel, DRIVERS[args.driver])
        elif args.scenario == "idle-watch":
            ok = idle_watch(pb2, pb2_grpc, channel, args.idle_seconds)
        elif args.scenario == "lost-hop":
            ok = lost_hop(pb2, pb2_grpc, channel)
        else:
            ok = Session(pb2, pb2_grpc, channel, DRIVERS[args.driver]).run()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
