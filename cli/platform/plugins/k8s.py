"""--target k8s: a Kubeflow PyTorchJob from k8s/pytorchjob.yaml.j2; submit, status, logs, delete and list
through the official `kubernetes` client (kubeconfig, else in-cluster).

The training-operator's admission rules (kubeflow/training-operator, pkg/webhooks/pytorch/
pytorchjob_webhook.go) hold for every manifest our template renders from validated settings: the tests
check them (tests/template_rules.py), a submit does not. What a user can choose wrong is checked here:
more processes per node than GPUs, and a job name too long for its pods' names.
spec.nprocPerNode exists from training-operator v1.7 on: v1.6 drops it without a word (one process per
pod), so v1.7 is the minimum (docs/platform.md). A multi-node job mounts one storage PVC in every pod: ReadWriteMany.
Our jobs carry the label app.kubernetes.io/name=wmtp (the template's); `wmtp ls` selects by it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from typing import TYPE_CHECKING, Any, Iterator, Literal

from pydantic import Field

from wmtp.errors import WmtpError
from wmtp_cli.platform.net import display_url, unreachable_cause
from wmtp_cli.platform.target import JobRow, Target
from wmtp_cli.platform.targets import DnsLabel, DnsSubdomain, ImageRef, Quantity, TargetSettings

if TYPE_CHECKING:
    from wmtp_cli.platform.context import JobContext, RenderedJob

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
CONTAINER_NAME = "pytorch"
OWN_LABEL = "app.kubernetes.io/name=wmtp"  # set by the template on the job and its pods
MAX_NAME_LENGTH = 63  # a pod name is a DNS-1123 label


class K8sSettings(TargetSettings):
    """A Kubeflow PyTorchJob: `nodes` pods (1 Master + Workers) with `gpus_per_node` GPUs each."""

    image: ImageRef
    namespace: DnsLabel
    nodes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=0)
    pvc: DnsSubdomain  # mounted at /data/storage
    mlflow_secret: DnsSubdomain  # MLFLOW_TRACKING_URI / _USERNAME / _PASSWORD (envFrom)
    env_secret: DnsSubdomain = "wmtp-secrets"  # the other env.secrets names (secretKeyRef, optional)
    shm_size: Quantity = "64Gi"  # /dev/shm emptyDir (Memory)
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    backoff_limit: int = Field(3, ge=0)
    ttl_seconds_after_finished: int = Field(7 * 24 * 3600, ge=0)


def choice_problems(context: JobContext) -> list[str]:
    """What the user's settings ask for that cannot run: more processes than GPUs, pod names too long."""
    settings, problems = context.settings, []
    if settings["gpus_per_node"] and context.nproc_per_node > settings["gpus_per_node"]:
        problems.append(
            f"distributed.nproc_per_node {context.nproc_per_node} exceeds targets.k8s.gpus_per_node "
            f"{settings['gpus_per_node']} (one process per GPU)"
        )
    longest_pod = f"{context.name}-worker-{max(settings['nodes'] - 2, 0)}"
    if len(longest_pod) > MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name: {context.name!r} is too long for its pod names ({longest_pod!r} > {MAX_NAME_LENGTH})"
        )
    return problems


# ---------------------------------------------------------------- the API

INSTALL_HINT = (
    "the Kubernetes client is not installed: pip install 'weighted-mtp[k8s]' "
    "(`wmtp submit … --dry-run` and `wmtp render` give the PyTorchJob without it)"
)


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
        raise WmtpError(
            "no Kubernetes credentials: set KUBECONFIG (or ~/.kube/config), or run inside a cluster"
        ) from None


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
        raise WmtpError(
            f"cannot reach the Kubernetes API server at {server_url(api)} to {action}: {unreachable_cause(exc)}"
        ) from None


def server_url(api) -> str:
    """The API server the client talks to, as it may be printed."""
    return display_url(str(getattr(api.configuration, "host", "") or "?"))


def api_message(exc) -> str:
    """The API server's own message in an error response (its Status body), else the body on one line."""
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return " ".join(str(exc.body or "").split())[:300]


def create_job(doc: dict, context: JobContext, server_dry_run: bool) -> list[str]:
    """Create the PyTorchJob (`dryRun=All` with server_dry_run); return what to tell the user."""
    client, _ = kubernetes_modules()

    namespace = context.settings["namespace"]
    with api_client() as api:
        custom = client.CustomObjectsApi(api)
        kwargs = {"dry_run": "All"} if server_dry_run else {}
        call_api(
            api,
            "create the PyTorchJob",
            custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            doc,
            **kwargs,
        )
    if server_dry_run:
        return [f"server dry run accepted PyTorchJob {context.name} in namespace {namespace} (nothing created)"]
    return [
        f"created PyTorchJob {context.name} in namespace {namespace}",
        f"follow it: wmtp status {context.name} --target k8s ; wmtp logs {context.name} --target k8s",
    ]


def status(name: str, settings: dict[str, Any]) -> list[str]:
    """The PyTorchJob's latest condition and its replicas' counts."""
    client, _ = kubernetes_modules()

    with api_client() as api:
        job = call_api(
            api,
            "read the PyTorchJob",
            client.CustomObjectsApi(api).get_namespaced_custom_object,
            GROUP,
            VERSION,
            settings["namespace"],
            PLURAL,
            name,
        )
    state = job_state(job)
    replicas = (job.get("status") or {}).get("replicaStatuses") or {}
    counts = ", ".join(f"{role}: {json.dumps(value, sort_keys=True)}" for role, value in sorted(replicas.items()))
    return [f"PyTorchJob {name} in {settings['namespace']}: {state}" + (f" ({counts})" if counts else "")]


def job_state(job: dict) -> str:
    """The latest condition of a PyTorchJob (Created, Running, Succeeded, Failed…), Pending before any."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return conditions[-1]["type"] if conditions else "Pending"


def logs(name: str, settings: dict[str, Any], tail: int, follow: bool = False) -> Iterator[str]:
    """The Master pod's trainer output (rank 0 prints progress; pods are named <job>-master-0); with
    `follow`, the API server streams it until the container ends."""
    client, _ = kubernetes_modules()

    pod, namespace = f"{name}-master-0", settings["namespace"]
    with api_client() as api:
        core = client.CoreV1Api(api)
        if not follow:
            text = call_api(
                api,
                "read the Master pod's log",
                core.read_namespaced_pod_log,
                pod,
                namespace,
                container=CONTAINER_NAME,
                tail_lines=tail,
            )
            yield from text.splitlines()
            return
        response = call_api(
            api,
            "follow the Master pod's log",
            core.read_namespaced_pod_log,
            pod,
            namespace,
            container=CONTAINER_NAME,
            tail_lines=tail,
            follow=True,
            _preload_content=False,
        )
        try:
            yield from stream_lines(api, response)
        finally:
            response.release_conn()


def stream_lines(api, response) -> Iterator[str]:
    """The lines of a streamed log as they arrive; a broken connection is one line, like any call."""
    from kubernetes.watch.watch import iter_resp_lines

    lines = iter_resp_lines(response)
    while True:
        line = call_api(api, "follow the Master pod's log", next, lines, None)
        if line is None:
            return
        yield line


def delete(name: str, settings: dict[str, Any]) -> list[str]:
    """Delete the PyTorchJob; its pods are its dependents, removed with it (Background propagation)."""
    client, _ = kubernetes_modules()

    namespace = settings["namespace"]
    with api_client() as api:
        call_api(
            api,
            "delete the PyTorchJob",
            client.CustomObjectsApi(api).delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            propagation_policy="Background",
        )
    return [f"deleted PyTorchJob {name} in namespace {namespace} (its pods go with it)"]


def list_pytorchjobs(settings: dict[str, Any]) -> list[JobRow]:
    """The namespace's PyTorchJobs with our label."""
    client, _ = kubernetes_modules()

    with api_client() as api:
        listed = call_api(
            api,
            "list the PyTorchJobs",
            client.CustomObjectsApi(api).list_namespaced_custom_object,
            GROUP,
            VERSION,
            settings["namespace"],
            PLURAL,
            label_selector=OWN_LABEL,
        )
    rows = []
    for job in listed.get("items") or []:
        metadata = job.get("metadata") or {}
        rows.append(
            JobRow(
                metadata.get("name", "?"),
                metadata.get("name", "?"),
                job_state(job),
                parse_time(metadata.get("creationTimestamp")),
            )
        )
    return rows


def parse_time(stamp: Any):
    """An API timestamp (RFC 3339, `…Z`) as an aware datetime; None when absent or unreadable."""
    try:
        return _dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


class K8sTarget(Target):
    name = "k8s"
    summary = (
        "a Kubeflow `PyTorchJob` (`k8s/pytorchjob.yaml.j2`): one `Master` + `Worker`s for more nodes, "
        "container `pytorch`, `nprocPerNode`, GPU limits, `/dev/shm`, the storage PVC, MLflow credentials "
        "from a `Secret`; created with `CustomObjectsApi.create_namespaced_custom_object` (the tests keep "
        "the template within the training-operator's admission rules)"
    )
    needs = (
        "`pip install 'weighted-mtp[k8s]'`, a kubeconfig (`KUBECONFIG`, `~/.kube/config`) or in-cluster "
        "credentials; the training-operator v1.7 or newer (v1.6 silently drops `spec.nprocPerNode`: one "
        "process per pod); for `nodes` > 1, a `ReadWriteMany` storage PVC (every pod mounts it)"
    )
    settings_model = K8sSettings
    template = "k8s/pytorchjob.yaml.j2"
    env_file_credentials = True
    server_dry_run = True

    def template_filters(self) -> dict[str, Any]:
        # The kubelet expands `$(VAR)` in a container's args from the pod's environment (which holds the
        # MLflow Secret) and reads `$$` as `$`: a `--set` value is passed literally only with `$` doubled.
        from wmtp_cli.secrets import escape_compose as double_dollars

        return {"kubelet_literal": double_dollars}

    def validate(self, document: Any, manifest: str, context: JobContext) -> None:
        problems = choice_problems(context)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise WmtpError(f"PyTorchJob {problems[0]}{more}")

    def submit(self, job: RenderedJob, env_file, server_dry_run: bool) -> tuple[list[str], int]:
        return create_job(job.document, job.context, server_dry_run), 0

    def status(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return status(ref, settings)

    def logs(self, ref: str, settings: dict[str, Any], tail: int, follow: bool) -> Iterator[str]:
        return logs(ref, settings, tail, follow)

    def cancel(self, ref: str, settings: dict[str, Any]) -> list[str]:
        return delete(ref, settings)

    def list_jobs(self, settings: dict[str, Any]) -> list[JobRow]:
        return list_pytorchjobs(settings)


TARGET = K8sTarget()
