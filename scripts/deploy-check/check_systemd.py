#!/usr/bin/env python3
"""Static checks of the systemd units in deploy/systemd and their example
environment files, beyond what `systemd-analyze verify` knows: the hardening
the project promises, the run-time directory and socket path, stop timeout
versus drain timeout, read-only certificates, and a loopback admin endpoint.

Usage: check_systemd.py HELP_FILE   (the `shim --help` output, for defaults)
"""

from __future__ import annotations

import posixpath
import re
import sys

sys.dont_write_bytecode = True
from common import (  # noqa: E402
    BINARY_NAME,
    Report,
    Unit,
    env_example_for,
    parse_duration,
    parse_env_file,
    rel,
    split_host_port,
    unit_files,
    unit_role,
)

# Directive -> required value, for both units.
REQUIRED = {
    "Type": "simple",
    "DynamicUser": "no",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}
SYSCALL_FILTERS = ["@system-service", "~@privileged @resources"]
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
CERT_DIR = "/etc/openshell-bridge"


def default_drain(help_text: str) -> float:
    m = re.search(r"OPENSHELL_BRIDGE_DRAIN_TIMEOUT=\]\s*\[default:\s*(\S+?)\]", help_text)
    return parse_duration(m.group(1)) if m else 10.0


def covered(path: str, dirs: list[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in (x.lstrip("-+") for x in dirs))


def main() -> None:
    help_text = open(sys.argv[1]).read() if len(sys.argv) > 1 else ""
    report = Report("systemd units (deploy/systemd), static")
    units = unit_files()
    report.check(len(units) == 2, "two units (shim and relay)", f"{[u.name for u in units]}")
    roles = set()
    for path in units:
        unit = Unit(path)
        n = rel(path)
        role = unit_role(unit)
        roles.add(role)
        report.check(
            unit.get("Service", "ExecStart") == f"/usr/local/bin/{BINARY_NAME} {role}" and role in ("shim", "relay"),
            f"{n}: ExecStart=/usr/local/bin/{BINARY_NAME} <role>, configured by the environment file",
            f"ExecStart={unit.get('Service', 'ExecStart')}",
        )
        wrong = [
            f"{k}={unit.get('Service', k)!s} (want {v!r})"
            for k, v in REQUIRED.items()
            if unit.get("Service", k) != v
        ]
        report.check(not wrong, f"{n}: required service and hardening directives ({len(REQUIRED)})", "; ".join(wrong))
        report.check(
            unit.all("Service", "SystemCallFilter") == SYSCALL_FILTERS,
            f"{n}: SystemCallFilter=@system-service, then ~@privileged @resources",
            f"{unit.all('Service', 'SystemCallFilter')}",
        )
        report.check(
            unit.get("Service", "PrivateUsers") in (None, "no", "false"),
            f"{n}: no PrivateUsers (SO_PEERCRED UIDs must stay real)",
        )
        user = unit.get("Service", "User")
        report.check(user not in (None, "", "root", "0"), f"{n}: runs as a dedicated non-root User= ({user})")
        report.check(
            unit.get("Install", "WantedBy") == "multi-user.target",
            f"{n}: WantedBy=multi-user.target",
        )

        example = env_example_for(unit)
        env_file = unit.get("Service", "EnvironmentFile") or ""
        if not report.check(
            env_file.startswith(CERT_DIR + "/") and example is not None and example.exists(),
            f"{n}: EnvironmentFile={env_file} has its example {rel(example) if example else '?'}",
        ):
            continue
        env, _ = parse_env_file(example)

        drain = parse_duration(env.get("OPENSHELL_BRIDGE_DRAIN_TIMEOUT", "")) or default_drain(help_text)
        stop = parse_duration(unit.get("Service", "TimeoutStopSec") or "")
        report.check(
            stop is not None and drain is not None and stop > drain,
            f"{n}: TimeoutStopSec ({stop}s) above the drain timeout ({drain}s)",
        )

        ro = " ".join(unit.all("Service", "ReadOnlyPaths")).split()
        report.check(CERT_DIR in ro, f"{n}: ReadOnlyPaths={CERT_DIR}")
        for var in ("OPENSHELL_BRIDGE_CA", "OPENSHELL_BRIDGE_CERT", "OPENSHELL_BRIDGE_KEY"):
            value = env.get(var, "")
            report.check(covered(value, ro), f"{rel(example)}: {var}={value} lies in a ReadOnlyPaths directory")

        admin = env.get("OPENSHELL_BRIDGE_ADMIN")
        host, port = split_host_port(admin or "")
        report.check(
            host in LOOPBACK and port == 9090 and env.get("OPENSHELL_BRIDGE_UNSAFE_ADMIN", "false") == "false",
            f"{rel(example)}: admin endpoint on loopback 127.0.0.1:9090, not --unsafe-admin",
            f"OPENSHELL_BRIDGE_ADMIN={admin}",
        )

        if role == "shim":
            runtime = unit.get("Service", "RuntimeDirectory")
            socket = env.get("OPENSHELL_BRIDGE_SOCKET", "")
            report.check(
                runtime == "openshell-bridge" and unit.get("Service", "RuntimeDirectoryMode") == "0700",
                f"{n}: RuntimeDirectory=openshell-bridge, RuntimeDirectoryMode=0700",
            )
            # Directly in the RuntimeDirectory: systemd creates it owned by
            # User= with mode 0700, which is what the shim insists on.
            report.check(
                posixpath.dirname(socket) == f"/run/{runtime}",
                f"{rel(example)}: OPENSHELL_BRIDGE_SOCKET={socket} is directly in /run/{runtime}",
            )
            report.check(bool(env.get("OPENSHELL_BRIDGE_UPSTREAM", "").startswith("https://")),
                         f"{rel(example)}: OPENSHELL_BRIDGE_UPSTREAM is https://")
        if role == "relay":
            driver = env.get("OPENSHELL_BRIDGE_DRIVER_SOCKET", "")
            rw = " ".join(unit.all("Service", "ReadWritePaths")).split()
            report.check(
                driver.startswith("/") and covered(posixpath.dirname(driver), rw),
                f"{n}: the driver socket's directory ({posixpath.dirname(driver)}) is in ReadWritePaths",
                f"ReadWritePaths={rw}",
            )
            _, lport = split_host_port(env.get("OPENSHELL_BRIDGE_LISTEN", ""))
            report.check(lport == 7443, f"{rel(example)}: OPENSHELL_BRIDGE_LISTEN on port 7443")
            report.check(
                bool(env.get("OPENSHELL_BRIDGE_ALLOW_CLIENT")) and env.get("OPENSHELL_BRIDGE_ALLOW_ANY_CLIENT", "false") == "false",
                f"{rel(example)}: clients admitted by identity (OPENSHELL_BRIDGE_ALLOW_CLIENT), not any client",
            )
    report.check(roles == {"shim", "relay"}, "one unit per role", f"{roles}")
    report.exit()


if __name__ == "__main__":
    main()
