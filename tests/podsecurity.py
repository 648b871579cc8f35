"""The "restricted" Pod Security Standard as a checker, written from the Kubernetes
documentation's rule list (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
the Baseline controls plus the Restricted ones, as of Kubernetes 1.30-1.33), independent of the
operator's own code: ``restricted_violations(pod)`` lists each control a pod (or a pod template:
``metadata`` + ``spec``) breaks, naming the field.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip
CONTAINER_GROUPS = ("containers", "initContainers", "ephemeralContainers")


def _containers(spec: dict[str, Any]):
    for group in CONTAINER_GROUPS:
        for container in spec.get(group) or []:
            yield f"spec.{group}[{container.get('name')}]", container


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    annotations = meta.get("annotations") or {}
    out: list[str] = []
    containers = list(_containers(spec))
    scs = [(at, c.get("securityContext") or {}) for at, c in containers]

    # --- Baseline ---
    # HostProcess
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("HostProcess: spec.securityContext.windowsOptions.hostProcess")
    for at, sc in scs:
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"HostProcess: {at}.securityContext.windowsOptions.hostProcess")
    # Host Namespaces
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"Host Namespaces: spec.{key}")
    # Privileged Containers
    for at, sc in scs:
        if sc.get("privileged"):
            out.append(f"Privileged Containers: {at}.securityContext.privileged")
    # Capabilities (baseline)
    for at, sc in scs:
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if extra:
            out.append(f"Capabilities: {at}.securityContext.capabilities.add {sorted(extra)}")
    # HostPath Volumes
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"HostPath Volumes: spec.volumes[{volume.get('name')}].hostPath")
    # Host Ports
    for at, container in containers:
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"Host Ports: {at}.ports[*].hostPort {port['hostPort']}")
    # AppArmor
    for at, sc in [("spec", psc), *scs]:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            out.append(f"AppArmor: {at}.securityContext.appArmorProfile.type {kind}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"AppArmor: metadata.annotations[{key}] {value}")
    # SELinux
    for at, sc in [("spec", psc), *scs]:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            out.append(f"SELinux: {at}.securityContext.seLinuxOptions.type {options['type']}")
        for key in ("user", "role"):
            if options.get(key):
                out.append(f"SELinux: {at}.securityContext.seLinuxOptions.{key}")
    # /proc Mount Type
    for at, sc in scs:
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"/proc Mount Type: {at}.securityContext.procMount {sc['procMount']}")
    # Seccomp (baseline: never Unconfined)
    for at, sc in [("spec", psc), *scs]:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {at}.securityContext.seccompProfile.type Unconfined")
    # Sysctls
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"Sysctls: spec.securityContext.sysctls {sysctl.get('name')}")

    # --- Restricted ---
    # Volume Types
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds or kinds - RESTRICTED_VOLUMES:
            out.append(f"Volume Types: spec.volumes[{volume.get('name')}] {sorted(kinds)}")
    # Privilege Escalation: must be set to false
    for at, sc in scs:
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"Privilege Escalation: {at}.securityContext.allowPrivilegeEscalation is not false")
    # Running as Non-root: the pod's true covers containers that leave it unset
    for at, sc in scs:
        value = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if value is not True:
            out.append(f"Running as Non-root: {at}.securityContext.runAsNonRoot (or the pod's) is not true")
    if psc.get("runAsNonRoot") is False:
        out.append("Running as Non-root: spec.securityContext.runAsNonRoot is false")
    # Running as Non-root user
    for at, sc in [("spec", psc), *scs]:
        if sc.get("runAsUser") == 0:
            out.append(f"Running as Non-root user: {at}.securityContext.runAsUser 0")
    # Seccomp (restricted): RuntimeDefault or Localhost, at the pod or in every container
    pod_profile = (psc.get("seccompProfile") or {}).get("type")
    if pod_profile not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"Seccomp: spec.securityContext.seccompProfile.type {pod_profile}")
    for at, sc in scs:
        profile = (sc.get("seccompProfile") or {}).get("type", pod_profile)
        if profile not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {at}.securityContext.seccompProfile.type (or the pod's) is {profile}")
    # Capabilities (restricted): drop ALL, add at most NET_BIND_SERVICE
    for at, sc in scs:
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"Capabilities: {at}.securityContext.capabilities.drop lacks ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            out.append(f"Capabilities: {at}.securityContext.capabilities.add {sorted(extra)}")
    return sorted(set(out))


def workload_pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(``Kind/name``, pod or pod template) for every object that runs pods."""
    pods = []
    for obj in objects:
        kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name")
        if kind == "Pod":
            pods.append((f"Pod/{name}", obj))
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            pods.append((f"{kind}/{name}", obj["spec"]["template"]))
        elif kind == "CronJob":
            pods.append((f"{kind}/{name}", obj["spec"]["jobTemplate"]["spec"]["template"]))
    return pods
