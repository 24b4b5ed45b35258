#!/usr/bin/env python3
"""Every bridge flag and OPENSHELL_BRIDGE_* variable used under deploy/ must
exist in the built binary's `shim --help` / `relay --help`, and each
deployment's configuration must be accepted by the binary.

Flags still being implemented are listed in PENDING_FLAGS in
scripts/validate-deploy; they are reported as pending, left out of the
dry runs, and become a failure once the binary has them (so the list gets
emptied).

Dry run: each deployment (systemd unit + its environment file, each bridge
container in the Kubernetes manifests) is started with its own arguments
and variables, except that the certificate paths point at files that do not
exist (and sockets at a scratch directory, listen/admin addresses at 127.0.0.1:0).
The binary parses and validates everything and then stops at the first
certificate: an error naming that missing file proves the configuration was
accepted, without binding anything on this machine.

Usage: check_flags.py SHIM_HELP_FILE RELAY_HELP_FILE
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
from common import (  # noqa: E402
    BINARY_NAME,
    DEPLOY,
    Report,
    Unit,
    binary,
    bridge_role,
    container_argv,
    env_example_for,
    is_bridge_container,
    literal_env,
    load_k8s_documents,
    parse_env_file,
    pending_flags,
    pod_containers,
    rel,
    unit_files,
    unit_role,
)

FLAG_RE = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")
ENV_RE = re.compile(r"\bOPENSHELL_BRIDGE_[A-Z0-9_]*[A-Z0-9]")
# An invocation written out in prose or comments: `openshell-driver-bridge shim --x ...`.
INVOCATION_RE = re.compile(rf"{BINARY_NAME}\s+(shim|relay)\b([^`\n]*)")

# Values replaced in the dry run: flag -> (env name, replacement key).
OVERRIDES = {
    "--ca": ("OPENSHELL_BRIDGE_CA", "ca"),
    "--cert": ("OPENSHELL_BRIDGE_CERT", "cert"),
    "--key": ("OPENSHELL_BRIDGE_KEY", "key"),
    "--socket": ("OPENSHELL_BRIDGE_SOCKET", "socket"),
    "--driver-socket": ("OPENSHELL_BRIDGE_DRIVER_SOCKET", "driver_socket"),
    "--listen": ("OPENSHELL_BRIDGE_LISTEN", "listen"),
    # Once the admin endpoint exists it may bind before the certificates load.
    "--admin": ("OPENSHELL_BRIDGE_ADMIN", "admin"),
}


def help_names(text: str) -> tuple[set[str], set[str]]:
    return set(FLAG_RE.findall(text)), set(ENV_RE.findall(text))


def flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def dry_run(report: Report, what: str, role: str, argv: list[str], env: dict[str, str], pending: set[str]) -> None:
    """Starts the binary with this configuration; it must get as far as loading the CA."""
    with tempfile.TemporaryDirectory(prefix="validate-deploy-") as scratch:
        repl = {
            "ca": f"{scratch}/missing-ca.pem",
            "cert": f"{scratch}/missing-cert.pem",
            "key": f"{scratch}/missing-key.pem",
            "socket": f"{scratch}/sock/shim.sock",
            "driver_socket": f"{scratch}/driver/driver.sock",
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
        }
        args = []
        skip_next = False
        for i, token in enumerate(argv):
            if skip_next:
                skip_next = False
                continue
            name = flag_name(token)
            if name in pending:
                continue  # pending flags are written --flag=value or as bare switches
            if name in OVERRIDES:
                key = OVERRIDES[name][1]
                args.append(f"{name}={repl[key]}")
                skip_next = "=" not in token
                continue
            args.append(token)
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1"}
        for k, v in env.items():
            if k in pending:
                continue
            run_env[k] = v
        for flag, (env_name, key) in OVERRIDES.items():
            if env_name in run_env:
                run_env[env_name] = repl[key]
        try:
            proc = subprocess.run(
                [str(binary())] + args,
                env=run_env,
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=15,
            )
        except subprocess.TimeoutExpired:
            report.fail(f"{what}: dry run stops at the missing certificate", "still running after 15 s")
            return
        out = (proc.stderr + proc.stdout).strip()
        reached_tls = proc.returncode != 0 and scratch in out and "missing-" in out
        first = out.splitlines()[0] if out else f"exit {proc.returncode}, no output"
        report.check(
            reached_tls,
            f"{what}: `{role}` accepts this configuration (stops only at the stand-in certificate path)",
            first,
        )


def main() -> None:
    shim_help, relay_help = (Path(p).read_text() for p in sys.argv[1:3])
    known = {"shim": help_names(shim_help), "relay": help_names(relay_help)}
    pending = pending_flags()
    report = Report("flags and variables used in deploy/ exist in the binary's --help")

    # Pending names that exist now must leave PENDING_FLAGS.
    all_known = known["shim"][0] | known["shim"][1] | known["relay"][0] | known["relay"][1]
    for name in sorted(pending):
        if name in all_known:
            report.fail(f"PENDING_FLAGS: {name}", "the binary has it now; remove it from PENDING_FLAGS in scripts/validate-deploy")

    uses: dict[tuple[str | None, str], set[str]] = {}  # (role or None, name) -> where

    def use(role, name, where):
        uses.setdefault((role, name), set()).add(where)

    runs = []  # (what, role, argv, env)

    # systemd: the role from ExecStart, the variables from the example env file.
    for path in unit_files():
        unit = Unit(path)
        role = unit_role(unit)
        words = (unit.get("Service", "ExecStart") or "").split()[2:]
        for w in words:
            if w.startswith("--"):
                use(role, flag_name(w), rel(path))
        example = env_example_for(unit)
        if example and example.exists():
            active, commented = parse_env_file(example)
            for name in set(active) | commented:
                if name.startswith("OPENSHELL_BRIDGE_"):
                    use(role, name, rel(example))
            runs.append((rel(path) + " + " + example.name, role, [role] + words, active))

    # Kubernetes: bridge containers' args and env.
    try:
        k8s_docs = load_k8s_documents()
    except Exception as e:
        report.fail("Kubernetes manifests parse as YAML", " ".join(str(e).split()))
        k8s_docs = []
    for path, _, doc in k8s_docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
            continue
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in pod_containers(pod):
            if not is_bridge_container(c):
                continue
            role = bridge_role(c)
            where = f"{rel(path)} {doc['metadata']['name']}/{c.get('name')}"
            argv = container_argv(c)
            for token in argv:
                if token.startswith("--"):
                    use(role, flag_name(token), where)
            for e in c.get("env") or []:
                if str(e.get("name", "")).startswith("OPENSHELL_BRIDGE_"):
                    use(role, e["name"], where)
            runs.append((where, role, argv, literal_env(c)))

    # Everything else under deploy/: written-out invocations and any variable name.
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        for m in INVOCATION_RE.finditer(text):
            for flag in FLAG_RE.findall(m.group(2)):
                use(m.group(1), flag, rel(path))
        for name in ENV_RE.findall(text):
            use(None, name, rel(path))

    by_name: dict[str, tuple[set, set]] = {}
    for (role, name), where in uses.items():
        roles, places = by_name.setdefault(name, (set(), set()))
        if role:
            roles.add(role)
        places.update(where)
    for name in sorted(by_name):
        roles, places = by_name[name]
        is_env = name.startswith("OPENSHELL_BRIDGE_")
        # A name seen only in prose must exist for some role; one used in a
        # role's configuration must exist for that role.
        missing = [r for r in sorted(roles) if name not in known[r][1 if is_env else 0]]
        if not roles and not any(name in known[r][1 if is_env else 0] for r in known):
            missing = ["shim", "relay"]
        label = f"{name} ({'/'.join(sorted(roles)) or 'any role'}: {', '.join(sorted(places))})"
        if not missing:
            report.check(True, label)
        elif name in pending:
            report.pending(f"{label}: not in --help yet, listed in PENDING_FLAGS")
        else:
            report.fail(label, f"not in `{BINARY_NAME} {'/'.join(missing)} --help`")

    for what, role, argv, env in runs:
        dry_run(report, what, role, argv, env, pending)
    report.exit()


if __name__ == "__main__":
    main()
