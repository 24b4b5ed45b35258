"""Shared helpers for scripts/validate-deploy's checks.

Every check prints one line, `ok` or `FAIL` (or `pending`/`note` for things
that are information only), and each checker exits non-zero when any check
failed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# VALIDATE_DEPLOY_DIR points the checks at a copy (the self-test mutates one).
DEPLOY = Path(os.environ.get("VALIDATE_DEPLOY_DIR", REPO / "deploy")).resolve()
SYSTEMD_DIR = DEPLOY / "systemd"
K8S_DIR = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
BINARY_NAME = "openshell-driver-bridge"
# Image name the Kubernetes manifests use for the bridge (built from deploy/Dockerfile).
BRIDGE_IMAGE = "openshell-driver-bridge"


class Report:
    """Collects check results and prints one line per check."""

    def __init__(self, title: str):
        self.failures = 0
        self.count = 0
        print(f"-- {title}")

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        self.count += 1
        if ok:
            print(f"  ok      {what}")
        else:
            self.failures += 1
            print(f"  FAIL    {what}" + (f": {why}" if why else ""))
        return ok

    def fail(self, what: str, why: str = "") -> bool:
        return self.check(False, what, why)

    def note(self, what: str) -> None:
        print(f"  note    {what}")

    def pending(self, what: str) -> None:
        print(f"  pending {what}")

    def exit(self) -> None:
        if self.failures:
            print(f"  => {self.failures} of {self.count} checks failed")
            sys.exit(1)
        print(f"  => all {self.count} checks passed")
        sys.exit(0)


def pending_flags() -> set[str]:
    """PENDING_FLAGS from scripts/validate-deploy (flags and env names not
    implemented yet), passed through the environment, space-separated."""
    return set(os.environ.get("VALIDATE_DEPLOY_PENDING_FLAGS", "").split())


def pending_features() -> set[str]:
    return set(os.environ.get("VALIDATE_DEPLOY_PENDING_FEATURES", "").split())


def binary() -> Path:
    return Path(os.environ.get("VALIDATE_DEPLOY_BIN", REPO / "target" / "debug" / BINARY_NAME))


def rel(path: Path) -> str:
    for base, shown in ((DEPLOY, "deploy"), (REPO, "")):
        try:
            return str(Path(shown) / path.resolve().relative_to(base))
        except ValueError:
            pass
    return str(path)


# --- systemd -----------------------------------------------------------------


class Unit:
    """A systemd unit file: sections of (key, value) in order, repeated keys kept."""

    def __init__(self, path: Path):
        self.path = path
        self.sections: dict[str, list[tuple[str, str]]] = {}
        section = None
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                self.sections.setdefault(section, [])
                continue
            key, _, value = line.partition("=")
            self.sections.setdefault(section or "", []).append((key.strip(), value.strip()))

    def all(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, []) if k == key]

    def get(self, section: str, key: str) -> str | None:
        values = self.all(section, key)
        return values[-1] if values else None


def unit_files() -> list[Path]:
    return sorted(SYSTEMD_DIR.glob("*.service"))


def unit_role(unit: Unit) -> str | None:
    exec_start = unit.get("Service", "ExecStart") or ""
    words = exec_start.lstrip("-@:+!").split()
    if len(words) >= 2 and words[0].endswith("/" + BINARY_NAME):
        return words[1]
    return None


def env_example_for(unit: Unit) -> Path | None:
    """deploy/systemd/NAME.env.example for EnvironmentFile=/etc/.../NAME.env."""
    env_file = unit.get("Service", "EnvironmentFile")
    if not env_file:
        return None
    return SYSTEMD_DIR / (Path(env_file.lstrip("-")).name + ".example")


def parse_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(active variables, names of commented-out example variables) of a
    systemd EnvironmentFile (KEY=VALUE lines, # comments)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith(("#", ";")):
            m = re.match(r"[#;]\s*([A-Z][A-Z0-9_]*)=", stripped)
            if m:
                commented.add(m.group(1))
            continue
        key, sep, value = stripped.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            active[key.strip()] = value
    return active, commented


def parse_duration(text: str) -> float | None:
    """Seconds of a bridge duration (500ms, 10s, 2m, 1h) or a systemd time span (30s, 1min 30s)."""
    units = {"ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    if not parts:
        return None
    for number, unit in parts:
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total


# --- Kubernetes --------------------------------------------------------------


def load_k8s_documents():
    """[(path, index, document)] of every non-empty YAML document in
    deploy/kubernetes. Duplicate mapping keys are an error (PyYAML would keep
    the last one silently; kubectl's strict decoding refuses them)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            keys.add(key)
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)

    docs = []
    for path in sorted(list(K8S_DIR.glob("*.yaml")) + list(K8S_DIR.glob("*.yml"))):
        with path.open() as fh:
            for index, doc in enumerate(yaml.load_all(fh, Loader=StrictLoader)):
                if doc is not None:
                    docs.append((path, index, doc))
    return docs


def pod_containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("containers") or []) + list(pod_spec.get("initContainers") or [])


def container_argv(container: dict) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def is_bridge_container(container: dict) -> bool:
    image = str(container.get("image", ""))
    name = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    return name == BRIDGE_IMAGE


def bridge_role(container: dict) -> str | None:
    argv = container_argv(container)
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Values of --flag=VALUE and --flag VALUE in argv."""
    values = []
    for i, token in enumerate(argv):
        if token.startswith(flag + "="):
            values.append(token[len(flag) + 1 :])
        elif token == flag and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values.append(argv[i + 1])
    return values


def has_switch(argv: list[str], flag: str) -> bool:
    return any(t == flag or t == flag + "=true" for t in argv)


def literal_env(container: dict) -> dict[str, str]:
    return {
        e["name"]: str(e["value"])
        for e in container.get("env") or []
        if isinstance(e, dict) and "name" in e and "value" in e
    }


def split_host_port(addr: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d+)", addr.strip())
    if not m:
        return addr, None
    return m.group(1), int(m.group(2))


def effective_uid_of_bridge_containers() -> set[int]:
    """runAsUser (container's, else the pod's) of every bridge container in deploy/kubernetes."""
    uids = set()
    try:
        docs = load_k8s_documents()
    except Exception:
        return uids  # check_k8s.py reports the parse error
    for _, _, doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
            continue
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in pod_containers(pod):
            if is_bridge_container(c):
                uid = (c.get("securityContext") or {}).get("runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))
                if uid is not None:
                    uids.add(int(uid))
    return uids
