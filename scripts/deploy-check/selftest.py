#!/usr/bin/env python3
"""Self-test of scripts/validate-deploy: every check must be able to fail.

Each case copies deploy/ to a scratch directory, makes one known-bad edit,
runs the checker that should notice it (with VALIDATE_DEPLOY_DIR pointing at
the copy) and expects it to fail with a FAIL line containing a given text.
A case whose edit no longer applies (the deployment files changed) fails
too: update the case with the files.

Usage: selftest.py SHIM_HELP_FILE RELAY_HELP_FILE
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
from common import DEPLOY, REPO, Report  # noqa: E402

HERE = Path(__file__).resolve().parent

# (what the edit breaks, file under deploy/, old text, new text, checker, text expected in a FAIL line)
# checker: a script in scripts/deploy-check, or "verify" for section 1 of validate-deploy.
CASES = [
    ("unknown directive in a unit", "systemd/openshell-bridge-shim.service",
     "ProtectClock=yes\n", "ProtectClock=yes\nProtectEverything=yes\n", "verify", "systemd-analyze verify"),
    ("unparsable value in a unit", "systemd/openshell-bridge-relay.service",
     "ProtectSystem=strict", "ProtectSystem=very", "verify", "systemd-analyze verify"),
    ("weaker hardening", "systemd/openshell-bridge-shim.service",
     "ProtectSystem=strict", "ProtectSystem=full", "check_systemd.py", "hardening directives"),
    ("capabilities kept", "systemd/openshell-bridge-relay.service",
     "CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n", "check_systemd.py", "hardening directives"),
    ("stop timeout below the drain timeout", "systemd/openshell-bridge-shim.service",
     "TimeoutStopSec=30s", "TimeoutStopSec=5s", "check_systemd.py", "TimeoutStopSec"),
    ("socket outside the RuntimeDirectory", "systemd/shim.env.example",
     "OPENSHELL_BRIDGE_SOCKET=/run/openshell-bridge/compute-driver.sock",
     "OPENSHELL_BRIDGE_SOCKET=/tmp/compute-driver.sock", "check_systemd.py", "directly in /run/openshell-bridge"),
    ("admin endpoint off loopback (systemd)", "systemd/relay.env.example",
     "OPENSHELL_BRIDGE_ADMIN=127.0.0.1:9090", "OPENSHELL_BRIDGE_ADMIN=0.0.0.0:9090", "check_systemd.py", "loopback"),
    ("misspelt variable", "systemd/shim.env.example",
     "OPENSHELL_BRIDGE_DRAIN_TIMEOUT=10s", "OPENSHELL_BRIDGE_DRAIN_TIMOUT=10s", "check_flags.py", "OPENSHELL_BRIDGE_DRAIN_TIMOUT"),
    ("variable of the other role", "systemd/shim.env.example",
     "OPENSHELL_BRIDGE_CONNECT_WAIT=15s", "OPENSHELL_BRIDGE_ALLOW_CLIENT=dns:x", "check_flags.py", "OPENSHELL_BRIDGE_ALLOW_CLIENT"),
    ("invalid value the binary rejects", "systemd/relay.env.example",
     "OPENSHELL_BRIDGE_DRAIN_TIMEOUT=10s", "OPENSHELL_BRIDGE_DRAIN_TIMEOUT=ten", "check_flags.py", "accepts this configuration"),
    ("misspelt flag in a pod", "kubernetes/relay-sidecar.yaml",
     "--log-format=json", "--log-fromat=json", "check_flags.py", "--log-fromat"),
    ("syscall filter the binary cannot live with", "systemd/openshell-bridge-relay.service",
     "SystemCallFilter=~@privileged @resources", "SystemCallFilter=~@privileged @resources @network-io",
     "check_sandbox.py", "SystemCallFilter"),
    ("address families the binary cannot live with", "systemd/openshell-bridge-shim.service",
     "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "RestrictAddressFamilies=AF_UNIX",
     "check_sandbox.py", "RestrictAddressFamilies"),
    ("MemoryDenyWriteExecute dropped", "systemd/openshell-bridge-relay.service",
     "MemoryDenyWriteExecute=yes\n", "", "check_systemd.py", "hardening directives"),
    ("namespace in a namespace-agnostic manifest", "kubernetes/relay-sidecar.yaml",
     "  name: openshell-driver\n", "  name: openshell-driver\n  namespace: default\n", "check_k8s.py", "namespace"),
    ("unexpected kind", "kubernetes/relay-sidecar.yaml",
     "kind: ServiceAccount", "kind: ClusterRoleBinding", "check_k8s.py", "kind expected"),
    ("selector not matching the pod labels", "kubernetes/relay-sidecar.yaml",
     "    matchLabels:\n      app.kubernetes.io/name: openshell-relay\n",
     "    matchLabels:\n      app.kubernetes.io/name: openshell-relay-x\n", "check_k8s.py", "selector.matchLabels"),
    ("writable root filesystem", "kubernetes/relay-sidecar.yaml",
     "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "check_k8s.py", "securityContext hardened"),
    ("capabilities not dropped", "kubernetes/shim-sidecar.yaml",
     'drop: ["ALL"]', 'drop: ["NET_RAW"]', "check_k8s.py", "securityContext hardened"),
    ("container without resources", "kubernetes/shim-sidecar.yaml",
     "          resources:\n            requests:\n              cpu: 100m\n              memory: 128Mi\n            limits:\n              memory: 1Gi\n",
     "", "check_k8s.py", "resources"),
    ("mount of an undeclared volume", "kubernetes/relay-sidecar.yaml",
     "            - name: tls\n              mountPath", "            - name: certs\n              mountPath",
     "check_k8s.py", "names a pod volume"),
    ("socket paths that differ between the containers", "kubernetes/shim-sidecar.yaml",
     "--compute-driver-socket=/run/openshell-bridge/shim/compute-driver.sock",
     "--compute-driver-socket=/run/openshell-bridge/shim/driver.sock", "check_k8s.py", "used by two containers"),
    ("socket in the emptyDir's root", "kubernetes/shim-sidecar.yaml",
     "/run/openshell-bridge/shim/compute-driver.sock", "/run/openshell-bridge/compute-driver.sock",
     "check_k8s.py", "subdirectory of the emptyDir"),
    ("socket outside the shared emptyDir", "kubernetes/relay-sidecar.yaml",
     "/run/openshell-driver/sock/driver.sock", "/tmp/sock/driver.sock", "check_k8s.py", "lies in an emptyDir"),
    ("containers sharing a socket under different UIDs", "kubernetes/shim-sidecar.yaml",
     "              memory: 1Gi\n          securityContext:\n            runAsUser: 65532\n",
     "              memory: 1Gi\n          securityContext:\n            runAsUser: 1000\n",
     "check_k8s.py", "one UID"),
    ("duplicate key in a manifest", "kubernetes/shim-sidecar.yaml",
     "  replicas: 1\n", "  replicas: 1\n  replicas: 2\n", "check_k8s.py", "duplicate key"),
    ("probe on an undeclared port", "kubernetes/relay-sidecar.yaml",
     "              path: /readyz\n              port: admin", "              path: /readyz\n              port: 9091",
     "check_k8s.py", "readinessProbe"),
    ("Service targeting a port the relay does not listen on", "kubernetes/relay-sidecar.yaml",
     "      targetPort: mtls", "      targetPort: admin", "check_k8s.py", "listen port"),
    ("relay listening on another port than declared", "kubernetes/relay-sidecar.yaml",
     "--listen=0.0.0.0:7443", "--listen=0.0.0.0:8443", "check_k8s.py", "--listen"),
    ("NetworkPolicy admitting every port", "kubernetes/relay-sidecar.yaml",
     "  ingress:\n    - ports:\n        - protocol: TCP\n          port: 7443\n", "  ingress:\n    - {}\n",
     "check_k8s.py", "admin port 9090 closed"),
    ("admin on all addresses without --unsafe-admin", "kubernetes/shim-sidecar.yaml",
     "            - --unsafe-admin\n", "", "check_k8s.py", "--unsafe-admin"),
    ("Secret no Certificate issues", "kubernetes/relay-sidecar.yaml",
     "secretName: openshell-relay-tls", "secretName: openshell-relay-certs", "check_k8s.py", "issued by a Certificate"),
    ("file that is not a key of the Secret", "kubernetes/shim-sidecar.yaml",
     "/etc/openshell-bridge/tls/tls.key", "/etc/openshell-bridge/tls/client-key.pem", "check_k8s.py", "key of the cert-manager Secret"),
    ("relay admitting an identity no certificate carries", "kubernetes/relay-sidecar.yaml",
     "--allow-client=dns:openshell-gateway", "--allow-client=dns:gateway", "check_k8s.py", "--allow-client"),
    ("relay certificate without the name the shim dials", "kubernetes/cert-manager.yaml",
     "    - openshell-relay.openshell.svc\n", "", "check_k8s.py", "upstream name"),
    ("Dockerfile without --locked", "Dockerfile",
     "cargo build --release --locked", "cargo build --release", "check_dockerfile.py", "--locked"),
    ("Dockerfile running as root", "Dockerfile",
     "USER 65532:65532", "USER root", "check_dockerfile.py", "non-root USER"),
    ("Dockerfile with a shell-form ENTRYPOINT", "Dockerfile",
     'ENTRYPOINT ["/usr/local/bin/openshell-driver-bridge"]', "ENTRYPOINT /usr/local/bin/openshell-driver-bridge",
     "check_dockerfile.py", "ENTRYPOINT"),
]


def main() -> None:
    shim_help, relay_help = sys.argv[1:3]
    report = Report(f"self-test: {len(CASES)} known-bad edits of a copy of deploy/")
    with tempfile.TemporaryDirectory(prefix="validate-deploy-selftest-") as scratch:
        for what, rel_path, old, new, checker, expect in CASES:
            copy = Path(scratch) / "deploy"
            if copy.exists():
                shutil.rmtree(copy)
            shutil.copytree(DEPLOY, copy)
            target = copy / rel_path
            text = target.read_text()
            if old not in text:
                report.fail(f"{what}: edit applies to deploy/{rel_path}", f"text not found: {old.strip()[:60]!r}")
                continue
            target.write_text(text.replace(old, new))
            env = dict(os.environ, VALIDATE_DEPLOY_DIR=str(copy))
            if checker == "verify":
                env["VALIDATE_DEPLOY_SECTIONS"] = "1"
                argv = [str(REPO / "scripts" / "validate-deploy")]
            else:
                argv = [sys.executable, str(HERE / checker)]
                if checker == "check_systemd.py":
                    argv.append(shim_help)
                if checker == "check_flags.py":
                    argv += [shim_help, relay_help]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            fails = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("FAIL")]
            caught = proc.returncode != 0 and any(expect in line for line in fails)
            report.check(
                caught,
                f"catches: {what} ({checker})",
                f"exit {proc.returncode}; FAIL lines: {fails[:3] or 'none'}",
            )
    report.exit()


if __name__ == "__main__":
    main()
