#!/usr/bin/env python3
"""Static checks of the Kubernetes manifests in deploy/kubernetes.

Parses every YAML document and checks structure (apiVersion/kind/name, known
kinds), pod hardening, volumes, the shared driver socket, probes and ports,
Service/NetworkPolicy wiring, the admin endpoint's exposure, and that every
Secret a pod mounts is issued by a cert-manager Certificate in the manifests.
"""

from __future__ import annotations

import posixpath
import sys
from urllib.parse import urlsplit

sys.dont_write_bytecode = True
from common import (  # noqa: E402
    Report,
    bridge_role,
    container_argv,
    flag_values,
    has_switch,
    is_bridge_container,
    literal_env,
    load_k8s_documents,
    pod_containers,
    rel,
    split_host_port,
)

EXPECTED_KINDS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "ServiceAccount": "v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Issuer": "cert-manager.io/v1",
    "ClusterIssuer": "cert-manager.io/v1",
    "Certificate": "cert-manager.io/v1",
}

# Flags (and env variables) through which a container names a Unix socket it
# serves or dials: the bridge's own, and the gateway's.
SOCKET_FLAGS = ["--socket", "--driver-socket", "--compute-driver-socket"]
SOCKET_ENV = ["OPENSHELL_BRIDGE_SOCKET", "OPENSHELL_BRIDGE_DRIVER_SOCKET", "OPENSHELL_COMPUTE_DRIVER_SOCKET"]

# What a cert-manager Certificate's Secret holds.
CERT_MANAGER_KEYS = {"tls.crt", "tls.key", "ca.crt"}

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def name_of(doc) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def effective_security(pod_spec: dict, container: dict) -> dict:
    pod = pod_spec.get("securityContext") or {}
    own = container.get("securityContext") or {}
    merged = {k: pod[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile") if k in pod}
    merged.update(own)
    return merged


def container_ports(container: dict) -> list[dict]:
    return list(container.get("ports") or [])


def resolve_port(container: dict, port) -> dict | None:
    """The containerPort entry a probe/Service/NetworkPolicy port (number or name) refers to."""
    for p in container_ports(container):
        if isinstance(port, int) and p.get("containerPort") == port:
            return p
        if isinstance(port, str) and p.get("name") == port:
            return p
    return None


def socket_paths(container: dict) -> list[tuple[str, str]]:
    """[(flag or env name, path)] of the sockets a container serves or dials."""
    argv = container_argv(container)
    found = []
    for flag in SOCKET_FLAGS:
        found += [(flag, v) for v in flag_values(argv, flag)]
    env = literal_env(container)
    found += [(name, env[name]) for name in SOCKET_ENV if name in env]
    return found


def bridge_setting(container: dict, flag: str, env_name: str) -> str | None:
    values = flag_values(container_argv(container), flag)
    if values:
        return values[-1]
    return literal_env(container).get(env_name)


def main() -> None:
    report = Report("Kubernetes manifests (deploy/kubernetes)")
    try:
        docs = load_k8s_documents()
    except Exception as e:  # yaml.YAMLError, with file and line
        report.fail("manifests parse as YAML (no duplicate keys)", " ".join(str(e).split()))
        report.exit()
    report.check(bool(docs), "manifests found", "no YAML documents in deploy/kubernetes")

    # --- every document ----------------------------------------------------
    seen = set()
    for path, index, doc in docs:
        where = f"{rel(path)}#{index}"
        if not isinstance(doc, dict):
            report.fail(f"{where}: is a mapping", type(doc).__name__)
            continue
        meta = doc.get("metadata") or {}
        kind = doc.get("kind")
        problems = []
        if not all([doc.get("apiVersion"), kind, meta.get("name")]):
            problems.append("apiVersion, kind or metadata.name missing")
        if kind not in EXPECTED_KINDS:
            problems.append(f"kind {kind} not in {sorted(EXPECTED_KINDS)}")
        elif doc.get("apiVersion") != EXPECTED_KINDS[kind]:
            problems.append(f"apiVersion {doc.get('apiVersion')}, expected {EXPECTED_KINDS[kind]}")
        if "namespace" in meta:
            problems.append(f"metadata.namespace {meta['namespace']} (manifests are namespace-agnostic)")
        if (kind, meta.get("name")) in seen:
            problems.append("duplicate kind/name")
        seen.add((kind, meta.get("name")))
        report.check(
            not problems,
            f"{where} {name_of(doc)}: apiVersion/kind/metadata.name present, kind expected, no namespace, unique",
            "; ".join(problems),
        )

    by_kind: dict[str, list[dict]] = {}
    for _, _, doc in docs:
        if isinstance(doc, dict):
            by_kind.setdefault(doc.get("kind"), []).append(doc)
    deployments = by_kind.get("Deployment", [])
    services = by_kind.get("Service", [])
    policies = by_kind.get("NetworkPolicy", [])
    certificates = by_kind.get("Certificate", [])
    issuers = {(d["kind"], d["metadata"]["name"]): d for d in by_kind.get("Issuer", []) + by_kind.get("ClusterIssuer", [])}
    cert_secrets = {(c.get("spec") or {}).get("secretName"): c for c in certificates}
    service_accounts = {d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])}

    # --- cert-manager ------------------------------------------------------
    for cert in certificates:
        spec = cert.get("spec") or {}
        n = name_of(cert)
        report.check(bool(spec.get("secretName")), f"{n}: has secretName")
        ref = spec.get("issuerRef") or {}
        ref_kind = ref.get("kind", "Issuer")
        report.check(
            (ref_kind, ref.get("name")) in issuers,
            f"{n}: issuerRef {ref_kind}/{ref.get('name')} is defined",
        )
        if not spec.get("isCA"):
            usages = spec.get("usages") or []
            report.check(
                "server auth" in usages or "client auth" in usages,
                f"{n}: usages name server auth or client auth",
                f"usages {usages}",
            )
            report.check(bool(spec.get("dnsNames") or spec.get("uris") or spec.get("commonName")),
                         f"{n}: carries an identity (dnsNames, uris or commonName)")
    for (kind, iname), issuer in issuers.items():
        ca = (issuer.get("spec") or {}).get("ca")
        if ca:
            source = cert_secrets.get(ca.get("secretName"))
            report.check(
                source is not None and (source.get("spec") or {}).get("isCA") is True,
                f"{kind}/{iname}: CA secret {ca.get('secretName')} comes from an isCA Certificate",
            )

    def certs_with_usage(usage):
        return [c for c in certificates if usage in ((c.get("spec") or {}).get("usages") or [])]

    # --- pods --------------------------------------------------------------
    relay_listen_ports = {}  # deployment name -> (container, port)
    relay_callback_ports = {}  # deployment name -> the --callback-listen port
    for dep in deployments:
        n = name_of(dep)
        spec = dep.get("spec") or {}
        template = spec.get("template") or {}
        tlabels = (template.get("metadata") or {}).get("labels") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        report.check(
            labels_match(selector, tlabels),
            f"{n}: selector.matchLabels match the pod template labels",
            f"selector {selector}, labels {tlabels}",
        )
        pod = template.get("spec") or {}
        for hostish in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(hostish):
                report.fail(f"{n}: {hostish} off")
        sa = pod.get("serviceAccountName")
        if sa:
            report.check(sa in service_accounts, f"{n}: serviceAccountName {sa} is defined")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        containers = pod_containers(pod)
        report.check(len(containers) >= 2, f"{n}: pod has two containers (sidecar)", f"{len(containers)}")

        # Secrets mounted must come from cert-manager Certificates.
        for vname, vol in volumes.items():
            if "secret" in vol:
                secret = vol["secret"].get("secretName")
                report.check(
                    secret in cert_secrets,
                    f"{n}: volume {vname}: Secret {secret} is issued by a Certificate",
                    f"no Certificate has secretName {secret}",
                )

        for c in containers:
            cn = f"{n} container {c.get('name')}"
            res = c.get("resources") or {}
            report.check(
                bool(res.get("requests")) and bool(res.get("limits")),
                f"{cn}: resources requests and limits set",
            )
            sec = effective_security(pod, c)
            caps = (sec.get("capabilities") or {})
            problems = []
            if sec.get("runAsNonRoot") is not True:
                problems.append("runAsNonRoot not true")
            if sec.get("runAsUser") in (0, None):
                problems.append(f"runAsUser {sec.get('runAsUser')}")
            if sec.get("readOnlyRootFilesystem") is not True:
                problems.append("readOnlyRootFilesystem not true")
            if sec.get("allowPrivilegeEscalation") is not False:
                problems.append("allowPrivilegeEscalation not false")
            if "ALL" not in (caps.get("drop") or []):
                problems.append("capabilities.drop lacks ALL")
            if caps.get("add"):
                problems.append(f"capabilities.add {caps['add']}")
            if sec.get("privileged"):
                problems.append("privileged")
            if (sec.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append("seccompProfile not RuntimeDefault")
            report.check(not problems, f"{cn}: securityContext hardened (non-root, read-only root, no escalation, drop ALL, seccomp)", ", ".join(problems))

            mount_paths = set()
            for m in c.get("volumeMounts") or []:
                mname = m.get("name")
                report.check(mname in volumes, f"{cn}: volumeMount {mname} names a pod volume")
                report.check(m.get("mountPath") not in mount_paths, f"{cn}: mountPath {m.get('mountPath')} used once")
                mount_paths.add(m.get("mountPath"))
                vol = volumes.get(mname) or {}
                if "secret" in vol:
                    report.check(
                        m.get("readOnly") is True and "subPath" not in m,
                        f"{cn}: Secret {mname} mounted read-only without subPath (renewals reach the files)",
                    )

            for probe_kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                probe = c.get(probe_kind)
                if not probe:
                    continue
                action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
                port = action.get("port")
                report.check(
                    resolve_port(c, port) is not None,
                    f"{cn}: {probe_kind} port {port} is a declared containerPort",
                )

            # Files under a cert-manager Secret mount must be keys the Secret has.
            for m in c.get("volumeMounts") or []:
                vol = volumes.get(m.get("name")) or {}
                if "secret" not in vol:
                    continue
                for token in container_argv(c) + list(literal_env(c).values()):
                    value = token.split("=", 1)[-1]
                    if value.startswith(m["mountPath"].rstrip("/") + "/"):
                        key = value[len(m["mountPath"].rstrip("/")) + 1 :]
                        report.check(
                            key in CERT_MANAGER_KEYS,
                            f"{cn}: {value} is a key of the cert-manager Secret ({', '.join(sorted(CERT_MANAGER_KEYS))})",
                        )

        # --- the shared socket --------------------------------------------
        users = {}
        for c in containers:
            users[c.get("name")] = effective_security(pod, c).get("runAsUser")
        socket_users: dict[str, list[tuple[dict, str]]] = {}
        for c in containers:
            for flag, path in socket_paths(c):
                cn = f"{n} container {c.get('name')}"
                report.check(path.startswith("/"), f"{cn}: {flag} {path} is absolute")
                socket_users.setdefault(posixpath.normpath(path), []).append((c, flag))
        for path, users_of in socket_users.items():
            names = sorted({c.get("name") for c, _ in users_of})
            report.check(
                len(names) >= 2,
                f"{n}: socket {path} is used by two containers",
                f"only {names}",
            )
            # The emptyDir holding it, mounted at the same path in every user.
            shared = None
            for vname, vol in volumes.items():
                if "emptyDir" not in vol:
                    continue
                mounted_at = set()
                for c, _ in users_of:
                    for m in c.get("volumeMounts") or []:
                        if m.get("name") == vname and path.startswith(m["mountPath"].rstrip("/") + "/"):
                            mounted_at.add((c.get("name"), m["mountPath"].rstrip("/")))
                if {cname for cname, _ in mounted_at} == set(names) and len({mp for _, mp in mounted_at}) == 1:
                    shared = (vname, next(iter(mounted_at))[1])
            if report.check(
                shared is not None,
                f"{n}: socket {path} lies in an emptyDir mounted at the same path in {', '.join(names)}",
            ):
                vname, mount_path = shared
                # The socket's server insists on a 0700 directory of its own;
                # the emptyDir root is root-owned 0777, so the socket must be
                # one directory further down (created by the server).
                report.check(
                    posixpath.dirname(path) != mount_path,
                    f"{n}: socket {path} sits in a subdirectory of the emptyDir {mount_path} (its root is root-owned 0777; the socket's owner needs a 0700 directory of its own)",
                    "the socket is directly in the emptyDir's root",
                )
            # A shim admits its own UID plus --allow-uid; anything else
            # (a first-party driver) admits only its own UID.
            uids = {users[c.get("name")] for c, _ in users_of}
            admitted = None
            for c, _ in users_of:
                if is_bridge_container(c) and bridge_role(c) == "shim":
                    admitted = {users[c.get("name")]} | {
                        int(u) for v in flag_values(container_argv(c), "--allow-uid") for u in v.split(",")}
            ok = uids <= admitted if admitted is not None else len(uids) == 1
            report.check(
                ok,
                f"{n}: containers sharing {path} run as one UID (peers are checked by SO_PEERCRED)",
                f"UIDs {users}",
            )

        # --- the bridge containers ----------------------------------------
        for c in containers:
            if not is_bridge_container(c):
                continue
            cn = f"{n} container {c.get('name')}"
            role = bridge_role(c)
            report.check(role in ("shim", "relay"), f"{cn}: first argument is the role (shim or relay)", f"{role}")
            argv = container_argv(c)

            admin = bridge_setting(c, "--admin", "OPENSHELL_BRIDGE_ADMIN")
            if report.check(admin is not None, f"{cn}: admin endpoint configured (--admin)"):
                host, port = split_host_port(admin)
                report.check(port is not None and resolve_port(c, port) is not None,
                             f"{cn}: admin port {port} is a declared containerPort")
                for probe_kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    http = (c.get(probe_kind) or {}).get("httpGet") or {}
                    target = resolve_port(c, http.get("port"))
                    report.check(
                        http.get("path") == path and target is not None and target.get("containerPort") == port,
                        f"{cn}: {probe_kind} GET {path} on the admin port {port}",
                        f"{http}",
                    )
                if host not in LOOPBACK:
                    unsafe = has_switch(argv, "--unsafe-admin") or literal_env(c).get("OPENSHELL_BRIDGE_UNSAFE_ADMIN") == "true"
                    report.check(unsafe, f"{cn}: non-loopback admin {admin} is explicitly --unsafe-admin")
                    # ...and only acceptable when a NetworkPolicy keeps the port closed.
                    guards = [
                        p for p in policies
                        if labels_match(((p.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}, tlabels)
                        and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
                    ]
                    admits_admin = False
                    for p in guards:
                        for rule in (p.get("spec") or {}).get("ingress") or []:
                            ports = rule.get("ports")
                            if not ports:
                                admits_admin = True  # a rule without ports admits every port
                            for pp in ports or []:
                                target = resolve_port(c, pp.get("port"))
                                if pp.get("port") == port or (target and target.get("containerPort") == port):
                                    admits_admin = True
                    report.check(
                        bool(guards) and not admits_admin,
                        f"{cn}: a NetworkPolicy selects the pod and keeps admin port {port} closed",
                        "no NetworkPolicy selects the pod" if not guards else "a rule admits the admin port",
                    )
                    for s in services:
                        if labels_match((s.get("spec") or {}).get("selector") or {}, tlabels):
                            exposed = [sp for sp in (s.get("spec") or {}).get("ports") or []
                                       if (resolve_port(c, sp.get("targetPort", sp.get("port"))) or {}).get("containerPort") == port]
                            report.check(not exposed, f"{name_of(s)}: does not expose the admin port {port}")

            if role == "relay":
                listen = bridge_setting(c, "--listen", "OPENSHELL_BRIDGE_LISTEN")
                _, lport = split_host_port(listen or "")
                if report.check(
                    lport is not None and resolve_port(c, lport) is not None,
                    f"{cn}: --listen {listen} port is a declared containerPort",
                ):
                    relay_listen_ports[dep["metadata"]["name"]] = (c, lport, tlabels)
                callback = bridge_setting(c, "--callback-listen", "OPENSHELL_BRIDGE_CALLBACK_LISTEN")
                if callback is not None:
                    _, cport = split_host_port(callback)
                    if report.check(
                        cport is not None and resolve_port(c, cport) is not None,
                        f"{cn}: --callback-listen {callback} port is a declared containerPort",
                    ):
                        relay_callback_ports[dep["metadata"]["name"]] = cport
                report.check(
                    not has_switch(argv, "--allow-any-client"),
                    f"{cn}: no --allow-any-client (identities are listed)",
                )
                for ident in flag_values(argv, "--allow-client"):
                    for one in ident.split(","):
                        scheme, _, value = one.partition(":")
                        matches = [
                            cert for cert in certs_with_usage("client auth")
                            if (scheme == "dns" and value in ((cert.get("spec") or {}).get("dnsNames") or []))
                            or (scheme == "cn" and value == (cert.get("spec") or {}).get("commonName"))
                            or (scheme == "uri" and value in ((cert.get("spec") or {}).get("uris") or []))
                        ]
                        report.check(
                            bool(matches),
                            f"{cn}: --allow-client {one} matches a client-auth Certificate",
                        )

            if role == "shim":
                for upstream in flag_values(argv, "--upstream"):
                    for url in upstream.split(","):
                        parts = urlsplit(url)
                        report.check(parts.scheme == "https" and parts.port is not None,
                                     f"{cn}: --upstream {url} is https://HOST:PORT")
                        server_name = bridge_setting(c, "--server-name", "OPENSHELL_BRIDGE_SERVER_NAME") or parts.hostname
                        report.check(
                            any(server_name in ((cert.get("spec") or {}).get("dnsNames") or [])
                                for cert in certs_with_usage("server auth")),
                            f"{cn}: upstream name {server_name} is among a server-auth Certificate's dnsNames",
                        )
                        svc_name = (parts.hostname or "").split(".")[0]
                        svc = [s for s in services if s["metadata"]["name"] == svc_name]
                        if svc:
                            ports = [sp.get("port") for sp in (svc[0].get("spec") or {}).get("ports") or []]
                            report.check(parts.port in ports, f"{cn}: upstream port {parts.port} is a port of Service {svc_name}", f"{ports}")
                        else:
                            report.note(f"{cn}: upstream {parts.hostname} is not a Service in these manifests (external relay)")

    # --- Services ----------------------------------------------------------
    for s in services:
        n = name_of(s)
        selector = (s.get("spec") or {}).get("selector") or {}
        targets = [d for d in deployments if labels_match(selector, ((d["spec"]["template"].get("metadata") or {}).get("labels") or {}))]
        if not report.check(bool(targets), f"{n}: selector matches a Deployment's pods", f"{selector}"):
            continue
        pod = targets[0]["spec"]["template"]["spec"]
        for sp in (s.get("spec") or {}).get("ports") or []:
            target = sp.get("targetPort", sp.get("port"))
            resolved = [resolve_port(c, target) for c in pod_containers(pod) if resolve_port(c, target)]
            report.check(bool(resolved), f"{n}: port {sp.get('port')} targetPort {target} is a declared containerPort")
            relay = relay_listen_ports.get(targets[0]["metadata"]["name"])
            if relay:
                rc, lport, _ = relay
                cport = relay_callback_ports.get(targets[0]["metadata"]["name"])
                report.check(
                    (resolve_port(rc, target) or {}).get("containerPort") in (lport, cport),
                    f"{n}: targetPort {target} is the relay's listen port {lport}"
                    + (f" or its callback port {cport}" if cport else ""),
                )

    # --- NetworkPolicies ---------------------------------------------------
    for p in policies:
        n = name_of(p)
        spec = p.get("spec") or {}
        sel = (spec.get("podSelector") or {}).get("matchLabels") or {}
        targets = [d for d in deployments if labels_match(sel, ((d["spec"]["template"].get("metadata") or {}).get("labels") or {}))]
        if not report.check(bool(targets), f"{n}: podSelector matches a Deployment's pods", f"{sel}"):
            continue
        report.check("Ingress" in (spec.get("policyTypes") or []), f"{n}: policyTypes includes Ingress")
        pod = targets[0]["spec"]["template"]["spec"]
        admitted = []
        for rule in spec.get("ingress") or []:
            if not report.check(bool(rule.get("ports")), f"{n}: every ingress rule names its ports"):
                continue
            for pp in rule["ports"]:
                resolved = [resolve_port(c, pp.get("port")) for c in pod_containers(pod) if resolve_port(c, pp.get("port"))]
                report.check(
                    bool(resolved) and pp.get("protocol", "TCP") == "TCP",
                    f"{n}: ingress TCP port {pp.get('port')} is a declared containerPort",
                )
                admitted += [r.get("containerPort") for r in resolved]
        relay = relay_listen_ports.get(targets[0]["metadata"]["name"])
        cport = relay_callback_ports.get(targets[0]["metadata"]["name"])
        if relay and cport is not None and admitted == [cport]:
            # The callback port leads to the gateway: only named pods may reach it.
            sources = [peer for rule in spec.get("ingress") or [] for peer in rule.get("from") or []]
            report.check(
                all(rule.get("from") for rule in spec.get("ingress") or [])
                and all(set(peer) <= {"podSelector", "namespaceSelector"} and peer.get("podSelector") for peer in sources),
                f"{n}: the callback port {cport} admits only selected (sandbox) pods",
                f"from {sources}",
            )
        elif relay:
            _, lport, _ = relay
            report.check(admitted == [lport], f"{n}: ingress admits exactly the relay port {lport}", f"admits {admitted}")

    report.exit()


if __name__ == "__main__":
    main()
