#!/usr/bin/env python3
"""What the deployment files rely on at run time, against the real binary:

- ExecReload=/bin/kill -HUP $MAINPID (systemd) must reload, not kill: SIGHUP's
  default action ends a process that does not handle it.
- KillSignal=SIGTERM (systemd) and the kubelet's SIGTERM must drain and exit
  cleanly (status 0) well within TimeoutStopSec / terminationGracePeriodSeconds,
  and the shim must remove its socket.
- Kubernetes Secret volumes: the key arrives as mode 0440 (fsGroup), which
  the bridge refuses unless --allow-loose-key-permissions is given (as the
  manifests do), and a renewal arrives as the kubelet's atomic `..data`
  symlink swap, which the bridge must notice and reload.

Development certificates from `certs init`, listeners on 127.0.0.1:0 and
sockets in a scratch directory. Features listed in PENDING_FEATURES
(scripts/validate-deploy) are reported as pending instead of failing, and
fail once they work (so the list gets emptied).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
from common import Report, binary, pending_features  # noqa: E402

ENV = {"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "OPENSHELL_BRIDGE_LOG_LEVEL": "info"}


def default_signals() -> None:
    """In the child: default dispositions for the signals under test (an
    ignored SIGHUP, e.g. under nohup or some CI runners, survives exec and
    would hide a missing handler)."""
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class Running:
    def __init__(self, argv: list[str], log: Path):
        self.log = log
        self.fh = log.open("a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.fh, stderr=subprocess.STDOUT,
                                     env=ENV, preexec_fn=default_signals)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, needle: str) -> int:
        return self.text().lower().count(needle)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.fh.close()


def secret_volume(root: Path, version: str, certs: Path, side: str) -> None:
    """Lays out (or renews) files the way the kubelet's atomic writer does:
    ..<version>/{tls.crt,tls.key,ca.crt} (0440, as with fsGroup), ..data ->
    ..<version>, and tls.crt -> ..data/tls.crt; a renewal swaps ..data in
    one rename."""
    root.mkdir(exist_ok=True)
    vdir = root / f"..{version}"
    vdir.mkdir()
    for key, src in (("tls.crt", f"{side}.pem"), ("tls.key", f"{side}-key.pem"), ("ca.crt", "ca.pem")):
        shutil.copy(certs / src, vdir / key)
        os.chmod(vdir / key, 0o440)
    tmp = root / "..data_tmp"
    tmp.symlink_to(vdir.name)
    os.replace(tmp, root / "..data")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        if not (root / key).is_symlink():
            (root / key).symlink_to(f"..data/{key}")


def main() -> None:
    report = Report("run time: signals, Secret-volume key permissions and renewal, against the binary")
    pending = pending_features()
    bin_ = str(binary())

    def pend_or_check(feature: str, ok: bool, what: str, why: str) -> None:
        if feature in pending:
            if ok:
                report.fail(what, f"works now: remove {feature} from PENDING_FEATURES in scripts/validate-deploy")
            else:
                report.pending(f"{what}: not yet ({why}); listed in PENDING_FEATURES")
        else:
            report.check(ok, what, why)

    with tempfile.TemporaryDirectory(prefix="validate-deploy-") as scratch:
        s = Path(scratch)
        for name in ("certs", "certs2"):
            subprocess.run([bin_, "certs", "init", "--out", str(s / name)], check=True, capture_output=True, env=ENV)
        secret = s / "secret"
        secret_volume(secret, "v1", s / "certs", "server")

        # --- relay, with its key in a Secret-volume layout (as in relay-sidecar.yaml)
        relay_argv = [bin_, "relay", "--listen=127.0.0.1:0", f"--driver-socket={s}/driver/sock/driver.sock",
                      "--allow-client=dns:openshell-gateway", f"--ca={secret}/ca.crt",
                      f"--cert={secret}/tls.crt", f"--key={secret}/tls.key", "--reload-interval=250ms"]
        strict = subprocess.run(relay_argv, capture_output=True, text=True, env=ENV, timeout=15,
                                stdin=subprocess.DEVNULL, preexec_fn=default_signals)
        report.check(
            strict.returncode != 0 and "readable by group" in strict.stderr,
            "relay: a 0440 Secret-volume key is refused without --allow-loose-key-permissions (why the manifests pass it)",
            (strict.stderr.strip().splitlines() or [f"exit {strict.returncode}"])[-1],
        )

        relay = Running(relay_argv + ["--allow-loose-key-permissions"], s / "relay.log")
        try:
            # Started: it logs "serving" (or, should that wording change, is still up after 3 s).
            wait_for(lambda: "serving" in relay.text() or not relay.alive(), 3)
            if report.check(relay.alive(),
                            "relay: starts with the 0440 key and --allow-loose-key-permissions", relay.text()[-300:]):
                before = relay.count("reloaded")
                relay.proc.send_signal(signal.SIGHUP)
                reloaded = wait_for(lambda: relay.count("reloaded") > before or not relay.alive(), 3)
                pend_or_check("sighup-reload", relay.alive() and reloaded,
                              "relay: SIGHUP (systemctl reload) reloads the certificates and keeps serving",
                              "killed" if not relay.alive() else "no reload logged")
                if not relay.alive():
                    relay = Running(relay_argv + ["--allow-loose-key-permissions"], s / "relay.log")
                    wait_for(lambda: "serving" in relay.text(), 3)

                before = relay.count("reloaded")
                secret_volume(secret, "v2", s / "certs2", "server")
                reloaded = wait_for(lambda: relay.count("reloaded") > before, 5)
                pend_or_check("file-reload", reloaded,
                              "relay: a renewal swapped in like the kubelet does (..data symlink) is reloaded",
                              "no reload logged within 5 s")

                t0 = time.monotonic()
                relay.proc.send_signal(signal.SIGTERM)
                exited = wait_for(lambda: not relay.alive(), 12)
                report.check(exited and relay.proc.returncode == 0,
                             f"relay: SIGTERM with nothing in flight exits 0 ({time.monotonic() - t0:.1f}s)",
                             f"status {relay.proc.returncode}")
        finally:
            relay.stop()

        # --- shim (as in the systemd unit: socket in its own 0700 directory)
        socket = s / "shim" / "compute-driver.sock"
        c = s / "certs"
        shim_argv = [bin_, "shim", f"--socket={socket}", "--upstream=https://127.0.0.1:9",
                     f"--ca={c}/ca.pem", f"--cert={c}/client.pem", f"--key={c}/client-key.pem"]
        shim = Running(shim_argv, s / "shim.log")
        try:
            if report.check(wait_for(lambda: socket.is_socket() or not shim.alive(), 10) and shim.alive(),
                            "shim: starts and creates its socket", shim.text()[-300:]):
                mode = socket.parent.stat().st_mode & 0o777
                report.check(mode == 0o700, f"shim: socket directory mode {mode:o} is 0700")
                before = shim.count("reloaded")
                shim.proc.send_signal(signal.SIGHUP)
                reloaded = wait_for(lambda: shim.count("reloaded") > before or not shim.alive(), 3)
                pend_or_check("sighup-reload", shim.alive() and reloaded,
                              "shim: SIGHUP (systemctl reload) reloads the certificates and keeps serving",
                              "killed" if not shim.alive() else "no reload logged")
                if shim.alive():
                    t0 = time.monotonic()
                    shim.proc.send_signal(signal.SIGTERM)
                    exited = wait_for(lambda: not shim.alive(), 12)
                    report.check(exited and shim.proc.returncode == 0,
                                 f"shim: SIGTERM with nothing in flight exits 0 ({time.monotonic() - t0:.1f}s)",
                                 f"status {shim.proc.returncode}")
                    report.check(not socket.exists(), "shim: socket removed on SIGTERM")
        finally:
            shim.stop()
    report.exit()


if __name__ == "__main__":
    main()
