#!/usr/bin/env python3
"""Static checks of deploy/Dockerfile (no container engine on the development
machine, so the image is not built here): multi-stage, a locked release
build, a non-root numeric USER matching the Kubernetes runAsUser, an
exec-form ENTRYPOINT at the copied binary, pinned base images, and a
.dockerignore that keeps build output and private keys out of the context.
"""

from __future__ import annotations

import json
import re
import sys

sys.dont_write_bytecode = True
from common import (  # noqa: E402
    BINARY_NAME,
    DOCKERFILE,
    REPO,
    Report,
    effective_uid_of_bridge_containers,
    rel,
)


def instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def main() -> None:
    report = Report(f"container image ({rel(DOCKERFILE)}), static")
    if not report.check(DOCKERFILE.exists(), f"{rel(DOCKERFILE)} exists"):
        report.exit()
    text = DOCKERFILE.read_text()
    ins = instructions(text)

    stages = []  # [(image, alias, [instructions])]
    for word, args in ins:
        if word == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.I)
            stages.append((m.group(1) if m else args, (m.group(2) if m else None), []))
        elif stages:
            stages[-1][2].append((word, args))
    report.check(len(stages) >= 2, "multi-stage build (builder and runtime stages)", f"{len(stages)} stage(s)")
    for image, _, _ in stages:
        tag = image.split("@")[0].rsplit("/", 1)[-1]
        report.check(
            ":" in tag and not tag.endswith(":latest") or "@sha256:" in image,
            f"base image {image} pinned to a tag or digest (not latest)",
        )
    if len(stages) < 2:
        report.exit()

    builders = stages[:-1]
    final_image, _, final = stages[-1]
    runs = " ".join(a for _, _, stage in builders for w, a in stage if w == "RUN")
    report.check(
        re.search(r"cargo build\b[^&;]*--release", runs) is not None and re.search(r"cargo build\b[^&;]*--locked", runs) is not None,
        "builder runs cargo build --release --locked",
    )
    # The builder's Rust must be new enough for Cargo.toml's rust-version.
    m = re.search(r'^rust-version\s*=\s*"([\d.]+)"', (REPO / "Cargo.toml").read_text(), re.M)
    builder_image = builders[-1][0]
    tm = re.match(r"rust:(\d+)(?:\.(\d+))?", builder_image.rsplit("/", 1)[-1])
    if m and tm:
        need = tuple(int(x) for x in m.group(1).split(".")[:2])
        have_minor = tm.group(2)
        report.check(
            have_minor is None or (int(tm.group(1)), int(have_minor)) >= need,
            f"builder image {builder_image} satisfies rust-version {m.group(1)}",
        )

    aliases = {alias for _, alias, _ in builders if alias}
    copies = [a for w, a in final if w == "COPY" and re.search(r"--from=(\S+)", a)]
    report.check(
        any(re.search(r"--from=(\S+)", c).group(1) in aliases for c in copies),
        "runtime stage copies the binary from the builder stage (COPY --from=<builder>)",
    )
    dest = f"/usr/local/bin/{BINARY_NAME}"
    report.check(any(c.split()[-1] in (dest, "/usr/local/bin/") for c in copies), f"binary copied to {dest}")
    report.check(not any(w == "ADD" and re.search(r"https?://", a) for _, _, s in stages for w, a in s),
                 "no ADD of remote URLs")

    users = [a for w, a in final if w == "USER"]
    user = users[-1] if users else None
    uid = (user or "").split(":")[0]
    report.check(
        user is not None and uid.isdigit() and int(uid) != 0 and all(p.isdigit() and int(p) != 0 for p in user.split(":")),
        f"runtime stage runs as a numeric non-root USER ({user})",
        "runAsNonRoot can only verify a numeric UID",
    )
    k8s_uids = effective_uid_of_bridge_containers()
    report.check(
        uid.isdigit() and k8s_uids <= {int(uid)},
        f"USER {uid} is the runAsUser of the bridge containers in deploy/kubernetes",
        f"manifests use {sorted(k8s_uids)}",
    )

    entry = [a for w, a in final if w == "ENTRYPOINT"]
    try:
        entry_argv = json.loads(entry[-1]) if entry else None
    except json.JSONDecodeError:
        entry_argv = None
    report.check(
        isinstance(entry_argv, list) and entry_argv[:1] == [dest],
        f'exec-form ENTRYPOINT ["{dest}"] (signals reach the bridge directly, no shell)',
        f"ENTRYPOINT {entry[-1] if entry else None}",
    )

    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    if report.check(ignore.exists(), f"{rel(ignore)} exists (BuildKit reads it for this Dockerfile)"):
        patterns = {line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")}
        for needed in ("target", ".git", "**/*-key.pem"):
            report.check(needed in patterns, f"{rel(ignore)} excludes {needed}")
    report.exit()


if __name__ == "__main__":
    main()
