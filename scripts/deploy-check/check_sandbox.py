#!/usr/bin/env python3
"""Does the binary live inside the systemd units' sandbox?

Runs `openshell-driver-bridge demo --smoke` (driver, relay and shim in one
process, a scripted session through all of them) under strace and checks what
it did against each unit's
  - SystemCallFilter (expanded from `systemd-analyze syscall-filter`),
  - RestrictAddressFamilies (the families of every socket() call),
  - MemoryDenyWriteExecute (no writable+executable mapping, no mprotect to exec).
A trace shows only what this run did, so this catches a filter that breaks the
common path, not every rare one.

Usage: check_sandbox.py   (needs strace and systemd-analyze on PATH)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
from common import Report, Unit, binary, rel, unit_files  # noqa: E402

SYSCALL_RE = re.compile(r"^\d+\s+([a-z_0-9]+)\(")


def syscall_groups() -> dict[str, set[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].add(line.split()[0])
    return groups


def expand(name: str, groups: dict[str, set[str]], seen=None) -> set[str]:
    seen = seen or set()
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    result = set()
    for member in groups.get(name, set()):
        result |= expand(member, groups, seen)
    return result


def allowed_syscalls(unit: Unit, groups) -> set[str] | None:
    """The effective allow-list of a unit's SystemCallFilter= lines (allow-list
    first, then each ~deny line removes)."""
    allowed = None
    for line in unit.all("Service", "SystemCallFilter"):
        deny = line.startswith("~")
        names = set()
        for item in line.lstrip("~").split():
            names |= expand(item.split(":")[0], groups)
        if deny:
            allowed = (allowed if allowed is not None else expand("@known", groups)) - names
        else:
            allowed = (allowed or set()) | names
    return allowed


def main() -> None:
    report = Report("sandbox compatibility: the binary under strace vs. the units' filters")
    groups = syscall_groups()
    with tempfile.TemporaryDirectory(prefix="validate-deploy-") as scratch:
        trace = Path(scratch) / "trace"
        proc = subprocess.run(
            ["strace", "-f", "-qq", "-o", str(trace), str(binary()), "demo", "--smoke", "--dir", f"{scratch}/demo"],
            capture_output=True,
            text=True,
            timeout=90,
            stdin=subprocess.DEVNULL,
        )
        if not report.check(
            proc.returncode == 0 and trace.exists(),
            "`demo --smoke` ran to success under strace",
            (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
        ):
            report.exit()
        lines = trace.read_text(errors="replace").splitlines()
    # The first execve is strace starting the binary, made before any unit's
    # sandbox would apply; everything after is the bridge.
    used = {m.group(1) for line in lines[1:] if (m := SYSCALL_RE.match(line))}
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", "\n".join(lines)))
    wx_maps = [l for l in lines if re.search(r"\bmmap\(.*PROT_WRITE\|PROT_EXEC|\bmmap\(.*PROT_EXEC\|PROT_WRITE", l)]
    x_protects = [l for l in lines if re.search(r"\b(pkey_)?mprotect\(.*PROT_EXEC", l)]
    opened = set(re.findall(r"\b(?:openat|open|statx|newfstatat|access|faccessat2?)\((?:AT_FDCWD|\d+)?,?\s*\"(/[^\"]*)\"", "\n".join(lines)))
    report.note(f"traced {len(used)} distinct system calls, socket families {sorted(families)}, {len(opened)} absolute paths")

    for path in unit_files():
        unit = Unit(path)
        n = rel(path)
        allowed = allowed_syscalls(unit, groups)
        if allowed is not None:
            denied = sorted(used - allowed)
            report.check(not denied, f"{n}: every traced system call passes SystemCallFilter", f"denied: {denied}")
        restrict = unit.get("Service", "RestrictAddressFamilies")
        if restrict:
            allowed_families = set(restrict.split())
            report.check(
                families <= allowed_families,
                f"{n}: every socket family used is in RestrictAddressFamilies",
                f"used {sorted(families - allowed_families)}",
            )
        hidden = []
        if unit.get("Service", "ProcSubset") == "pid":
            hidden += [p for p in opened if re.match(r"/proc/(?!self\b|thread-self\b|\d+\b)", p)]
        if unit.get("Service", "ProtectHome") == "yes":
            hidden += [p for p in opened if re.match(r"/(home|root|run/user)(/|$)", p)]
        if unit.get("Service", "PrivateDevices") == "yes":
            hidden += [p for p in opened if re.match(r"/dev/(?!(null|zero|full|random|urandom|tty|ptmx|pts|shm|mqueue|log|stdin|stdout|stderr|fd)\b)", p)]
        report.check(
            not hidden,
            f"{n}: no file the binary opened is hidden by ProcSubset/ProtectHome/PrivateDevices",
            f"{sorted(hidden)[:5]}",
        )
        if unit.get("Service", "MemoryDenyWriteExecute") == "yes":
            report.check(
                not wx_maps and not x_protects,
                f"{n}: no writable+executable memory (MemoryDenyWriteExecute)",
                (wx_maps + x_protects)[0] if wx_maps or x_protects else "",
            )
    report.exit()


if __name__ == "__main__":
    main()
