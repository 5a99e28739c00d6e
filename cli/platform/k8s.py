"""Kubeflow PyTorchJob: the training-operator's admission rules checked before sending; submit,
status and logs through the official `kubernetes` client (kubeconfig, else in-cluster).

Operator rules (kubeflow/training-operator, pkg/webhooks/pytorch/pytorchjob_webhook.go and
pkg/webhooks/utils/utils.go; types in pkg/apis/kubeflow.org/v1): the name is a DNS-1035 label;
pytorchReplicaSpecs is required; replica types are Master or Worker; every replica has containers,
each with an image, one of them named `pytorch`; Master.replicas must be 1; Worker.replicas ≥ 1;
an elasticPolicy needs a Worker and forbids elasticPolicy.nProcPerNode together with nprocPerNode.
spec.nprocPerNode exists from training-operator v1.7 on: v1.6 drops it without a word (one process per
pod), so v1.7 is the minimum (README). A multi-node job mounts one storage PVC in every pod: ReadWriteMany.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from wmtp_cli.platform.context import JobContext
from wmtp_cli.platform.net import display_url, unreachable_cause
from wmtp.errors import WmtpError

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
REPLICA_TYPES = ("Master", "Worker")
CONTAINER_NAME = "pytorch"
# The only env vars a manifest may give as literal values: everything else is a Secret reference.
LITERAL_ENV = ("WMTP_JOB_NAME", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
CLEAN_POD_POLICIES = ("None", "Running", "All")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")


def validate_pytorchjob(doc: Any, context: JobContext | None = None) -> None:
    """Raise one line for the first violation of the operator's rules (then the project's)."""
    problems = operator_violations(doc)
    if not problems and context is not None:
        problems = project_violations(doc, context)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WmtpError(f"PyTorchJob {problems[0]}{more}")


def operator_violations(doc: Any) -> list[str]:
    """Every admission-rule violation as `field.path: reason`, in the operator's wording."""
    if not isinstance(doc, dict):
        return ["(top level): expected a mapping"]
    problems = []
    if doc.get("apiVersion") != f"{GROUP}/{VERSION}" or doc.get("kind") != KIND:
        problems.append(f"apiVersion/kind: expected {GROUP}/{VERSION} {KIND}")
    name = (doc.get("metadata") or {}).get("name") or ""
    if not DNS1035.fullmatch(name) or len(name) > 63:
        problems.append(f"metadata.name: Invalid value {name!r}: should match a DNS-1035 label")
    spec = doc.get("spec") or {}
    problems += run_policy_violations(spec.get("runPolicy") or {})
    problems += elastic_violations(spec)
    problems += replica_violations(spec.get("pytorchReplicaSpecs"))
    return problems


def run_policy_violations(policy: dict) -> list[str]:
    problems = []
    if policy.get("cleanPodPolicy", "None") not in CLEAN_POD_POLICIES:
        problems.append(f"spec.runPolicy.cleanPodPolicy: Unsupported value {policy['cleanPodPolicy']!r}: "
                        f"supported values: {', '.join(CLEAN_POD_POLICIES)}")
    for key in ("backoffLimit", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
        value = policy.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            problems.append(f"spec.runPolicy.{key}: Invalid value {value!r}: must be a non-negative integer")
    return problems


def elastic_violations(spec: dict) -> list[str]:
    elastic = spec.get("elasticPolicy")
    if elastic is None:
        return []
    problems = []
    if "Worker" not in (spec.get("pytorchReplicaSpecs") or {}):
        problems.append("spec.pytorchReplicaSpecs[Worker]: Required value: must be configured if elastic policy is used")
    if elastic.get("nProcPerNode") is not None and spec.get("nprocPerNode") is not None:
        problems.append("spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with spec.nprocPerNode")
    return problems


def replica_violations(replicas: Any) -> list[str]:
    path = "spec.pytorchReplicaSpecs"
    if not replicas:
        return [f"{path}: Required value: must be required"]
    problems = []
    for rtype, rspec in replicas.items():
        role = f"{path}[{rtype}]"
        if rtype not in REPLICA_TYPES:
            problems.append(f"{role}: Unsupported value: {rtype!r}: supported values: \"Master\", \"Worker\"")
        rspec = rspec or {}
        problems += container_violations(role, rspec)
        count = rspec.get("replicas")
        if rtype == "Master" and count != 1:
            problems.append(f"{role}.replicas: Forbidden: must be 1")
        elif rtype != "Master" and count is not None and count < 1:
            problems.append(f"{role}.replicas: Forbidden: must be at least 1")
        if rspec.get("restartPolicy", "Never") not in RESTART_POLICIES:
            problems.append(f"{role}.restartPolicy: Unsupported value {rspec['restartPolicy']!r}")
    return problems


def container_violations(role: str, rspec: dict) -> list[str]:
    containers_path = f"{role}.template.spec.containers"
    containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
    if not containers:
        return [f"{containers_path}: Required value: must be specified"]
    problems = [f"{containers_path}[{index}].image: Required value: must be required"
                for index, container in enumerate(containers) if not container.get("image")]
    if not any(container.get("name") == CONTAINER_NAME for container in containers):
        problems.append(f"{containers_path}: Required value: must have at least one container with name {CONTAINER_NAME}")
    return problems


def project_violations(doc: dict, context: JobContext) -> list[str]:
    """What DESIGN.md asks of our jobs beyond admission: layout, GPUs, /dev/shm, storage, secrets."""
    settings, spec = context.settings, doc["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    problems = []
    if spec.get("nprocPerNode") != str(context.nproc_per_node):
        problems.append(f"spec.nprocPerNode: expected {str(context.nproc_per_node)!r}")
    if ("Worker" in replicas) != (settings["nodes"] > 1):
        problems.append(f"spec.pytorchReplicaSpecs: Worker replicas must exist exactly when nodes > 1 "
                        f"(targets.k8s.nodes = {settings['nodes']})")
    if settings["gpus_per_node"] and context.nproc_per_node > settings["gpus_per_node"]:
        problems.append(f"distributed.nproc_per_node {context.nproc_per_node} exceeds targets.k8s.gpus_per_node "
                        f"{settings['gpus_per_node']} (one process per GPU)")
    longest_pod = f"{context.name}-worker-{max(settings['nodes'] - 2, 0)}"
    if len(longest_pod) > 63:
        problems.append(f"metadata.name: {context.name!r} is too long for its pod names ({longest_pod!r} > 63)")
    for rtype, rspec in replicas.items():
        role = f"spec.pytorchReplicaSpecs[{rtype}]"
        problems += pod_violations(role, rspec["template"]["spec"], settings)
        problems += grace_violations(role, rspec["template"]["spec"], context.preemption_grace_s)
    return problems


def grace_violations(role: str, pod: dict, grace_s: int) -> list[str]:
    """Preemption must be able to save: torchrun waits `grace_s` for the workers, the pod longer still."""
    container = next(c for c in pod["containers"] if c.get("name") == CONTAINER_NAME)
    env = {var.get("name"): var.get("value") for var in container.get("env") or []}
    problems = []
    if env.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") != str(grace_s):
        problems.append(f"{role}: TORCH_ELASTIC_SHUTDOWN_TIMEOUT must be distributed.preemption_grace_s ({grace_s})")
    pod_grace = pod.get("terminationGracePeriodSeconds", 30)
    if not isinstance(pod_grace, int) or pod_grace <= grace_s:
        problems.append(f"{role}.template.spec.terminationGracePeriodSeconds: {pod_grace} must exceed "
                        f"distributed.preemption_grace_s ({grace_s}), or a preempted pod is killed mid-save")
    return problems


def pod_violations(role: str, pod: dict, settings: dict) -> list[str]:
    container = next(c for c in pod["containers"] if c.get("name") == CONTAINER_NAME)
    volumes = {volume.get("name"): volume for volume in pod.get("volumes") or []}
    mounts = {mount.get("mountPath"): mount.get("name") for mount in container.get("volumeMounts") or []}
    problems = []
    shm = volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir") or {}
    if shm.get("medium") != "Memory":
        problems.append(f"{role}: /dev/shm must be an emptyDir with medium Memory")
    claims = [v["persistentVolumeClaim"].get("claimName") for v in volumes.values() if "persistentVolumeClaim" in v]
    if settings["pvc"] not in claims:
        problems.append(f"{role}: the storage PVC {settings['pvc']!r} is not mounted")
    gpus = ((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0)
    if gpus != settings["gpus_per_node"]:
        problems.append(f"{role}: nvidia.com/gpu limit {gpus} != targets.k8s.gpus_per_node {settings['gpus_per_node']}")
    secret_refs = [ref.get("secretRef", {}).get("name") for ref in container.get("envFrom") or []]
    if settings["mlflow_secret"] not in secret_refs:
        problems.append(f"{role}: MLflow credentials must come from Secret {settings['mlflow_secret']!r}")
    if any("value" in var and var["name"] not in LITERAL_ENV for var in container.get("env") or []):
        problems.append(f"{role}: env values must be secret references")
    return problems


# ---------------------------------------------------------------- the API

INSTALL_HINT = ("the Kubernetes client is not installed: pip install 'weighted-mtp[k8s]' "
                "(or use --dry-run / wmtp render to get the PyTorchJob without it)")


def kubernetes_modules():
    """`(kubernetes.client, kubernetes.config)`, or one line saying how to install the optional extra."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise WmtpError(INSTALL_HINT) from None
    return client, config


def api_client():
    """A `kubernetes` ApiClient from the kubeconfig (KUBECONFIG or ~/.kube/config), else in-cluster."""
    client, config = kubernetes_modules()

    # The client reads $KUBECONFIG once, at import; read it now so an --env-file or a later export counts.
    kubeconfig = os.environ.get("KUBECONFIG") or None
    try:
        return config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    except config.ConfigException:
        pass
    except Exception as exc:  # a file that is not YAML, or YAML that is not a kubeconfig: name it, no traceback
        # Only the error's type and line: its text could quote the file, and a kubeconfig holds tokens.
        mark = getattr(exc, "problem_mark", None)
        where = (kubeconfig or "~/.kube/config") + (f":{mark.line + 1}" if mark is not None else "")
        raise WmtpError(f"{where}: not a usable kubeconfig ({type(exc).__name__})") from None
    try:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except config.ConfigException:
        raise WmtpError("no Kubernetes credentials: set KUBECONFIG (or ~/.kube/config), or run inside a cluster") from None


def call_api(api, action: str, function, *args, **kwargs):
    """Run one API call through `api` (an ApiClient); an HTTP error or an unreachable server becomes
    one clear line, the latter naming the server and why it could not be reached."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return function(*args, **kwargs)
    except ApiException as exc:
        raise WmtpError(f"Kubernetes API refused to {action}: {exc.status} {exc.reason}: {api_message(exc)}") from None
    except HTTPError as exc:
        raise WmtpError(f"cannot reach the Kubernetes API server at {server_url(api)} to {action}: "
                        f"{unreachable_cause(exc)}") from None


def server_url(api) -> str:
    """The API server the client talks to, as it may be printed."""
    return display_url(str(getattr(api.configuration, "host", "") or "?"))


def api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return " ".join(str(exc.body or "").split())[:300]


def submit(doc: dict, context: JobContext, server_dry_run: bool) -> list[str]:
    """Create the PyTorchJob (`dryRun=All` with server_dry_run); return what to tell the user."""
    client, _ = kubernetes_modules()

    namespace = context.settings["namespace"]
    with api_client() as api:
        custom = client.CustomObjectsApi(api)
        kwargs = {"dry_run": "All"} if server_dry_run else {}
        call_api(api, "create the PyTorchJob", custom.create_namespaced_custom_object,
                 GROUP, VERSION, namespace, PLURAL, doc, **kwargs)
    if server_dry_run:
        return [f"server dry run accepted PyTorchJob {context.name} in namespace {namespace} (nothing created)"]
    return [f"created PyTorchJob {context.name} in namespace {namespace}",
            f"follow it: wmtp status {context.name} --target k8s ; wmtp logs {context.name} --target k8s"]


def status(name: str, settings: dict[str, Any]) -> list[str]:
    client, _ = kubernetes_modules()

    with api_client() as api:
        job = call_api(api, "read the PyTorchJob", client.CustomObjectsApi(api).get_namespaced_custom_object,
                       GROUP, VERSION, settings["namespace"], PLURAL, name)
    conditions = (job.get("status") or {}).get("conditions") or []
    state = conditions[-1]["type"] if conditions else "Pending"
    replicas = (job.get("status") or {}).get("replicaStatuses") or {}
    counts = ", ".join(f"{role}: {json.dumps(value, sort_keys=True)}" for role, value in sorted(replicas.items()))
    return [f"PyTorchJob {name} in {settings['namespace']}: {state}" + (f" ({counts})" if counts else "")]


def logs(name: str, settings: dict[str, Any], tail: int) -> list[str]:
    """The Master pod's trainer output (rank 0 prints progress; pods are named <job>-master-0)."""
    client, _ = kubernetes_modules()

    with api_client() as api:
        text = call_api(api, "read the Master pod's log", client.CoreV1Api(api).read_namespaced_pod_log,
                        f"{name}-master-0", settings["namespace"], container=CONTAINER_NAME, tail_lines=tail)
    return text.splitlines()
