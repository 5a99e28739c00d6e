"""Our job templates' invariants, as the tests check them on every manifest the templates render.

A submit does not check these: they hold for every rendered manifest because the template writes them
and the settings models validate every value that reaches it (test_render_experiments renders every
experiment for every target and checks it here). A submit checks only what a user can choose wrong
(each target's `validate`). Moved here from the target modules:

- k8s: the training-operator's admission rules (kubeflow/training-operator,
  pkg/webhooks/pytorch/pytorchjob_webhook.go and pkg/webhooks/utils/utils.go; types in
  pkg/apis/kubeflow.org/v1): the name is a DNS-1035 label; pytorchReplicaSpecs is required; replica
  types are Master or Worker; every replica has containers, each with an image, one of them named
  `pytorch`; Master.replicas must be 1; Worker.replicas ≥ 1; an elasticPolicy needs a Worker and forbids
  elasticPolicy.nProcPerNode together with nprocPerNode. Then ours: layout, GPUs, /dev/shm, storage,
  secrets, preemption grace;
- vessl: the run YAML's keys and shapes VESSL accepts;
- local-docker: the services, `ipc`, the MLflow wiring, the storage mount, the GPU reservation;
- skypilot: SkyPilot's own task validation (the installed `skypilot` package, offline: its task, resources,
  storage and config schemas through `sky.Task.from_yaml_config`, the name, run and workdir checks), then
  ours: the settings' resources, the bucket at /data/storage, names-only secrets, torchrun's layout.

`RULES` maps a target name to its check (raising WmtpError with one line).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import os
import re
import shlex
import shutil
import socket
import tempfile
from typing import Any, Iterator, Optional

from wmtp.errors import WmtpError
from wmtp_cli.platform.context import JobContext
from wmtp_cli.platform.plugins.local_docker import check_with_binary

# ---------------------------------------------------------------- k8s: PyTorchJob

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
REPLICA_TYPES = ("Master", "Worker")
CONTAINER_NAME = "pytorch"
# The only env vars a manifest may give as literal values: everything else is a Secret reference.
LITERAL_ENV = ("WMTP_JOB_NAME", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
CLEAN_POD_POLICIES = ("None", "Running", "All")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")


def validate_pytorchjob(doc: Any, context: JobContext | None = None) -> None:
    """Raise one line for the first violation of the operator's rules (then the template's)."""
    problems = operator_violations(doc)
    if not problems and context is not None:
        problems = template_violations(doc, context)
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
        problems.append(
            f"spec.runPolicy.cleanPodPolicy: Unsupported value {policy['cleanPodPolicy']!r}: "
            f"supported values: {', '.join(CLEAN_POD_POLICIES)}"
        )
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
        problems.append(
            "spec.pytorchReplicaSpecs[Worker]: Required value: must be configured if elastic policy is used"
        )
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
            problems.append(f'{role}: Unsupported value: {rtype!r}: supported values: "Master", "Worker"')
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
    problems = [
        f"{containers_path}[{index}].image: Required value: must be required"
        for index, container in enumerate(containers)
        if not container.get("image")
    ]
    if not any(container.get("name") == CONTAINER_NAME for container in containers):
        problems.append(
            f"{containers_path}: Required value: must have at least one container with name {CONTAINER_NAME}"
        )
    return problems


def template_violations(doc: dict, context: JobContext) -> list[str]:
    """What the platform design asks of our jobs beyond admission: layout, GPUs, /dev/shm, storage, secrets, grace."""
    settings, spec = context.settings, doc["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    problems = []
    if (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name") != "wmtp":
        problems.append("metadata.labels: app.kubernetes.io/name must be wmtp (`wmtp ls --target k8s` selects by it)")
    if spec.get("nprocPerNode") != str(context.nproc_per_node):
        problems.append(f"spec.nprocPerNode: expected {str(context.nproc_per_node)!r}")
    if ("Worker" in replicas) != (settings["nodes"] > 1):
        problems.append(
            f"spec.pytorchReplicaSpecs: Worker replicas must exist exactly when nodes > 1 "
            f"(targets.k8s.nodes = {settings['nodes']})"
        )
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
        problems.append(
            f"{role}.template.spec.terminationGracePeriodSeconds: {pod_grace} must exceed "
            f"distributed.preemption_grace_s ({grace_s}), or a preempted pod is killed mid-save"
        )
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


# ---------------------------------------------------------------- vessl: run YAML

TOP_LEVEL_KEYS = {
    "name",
    "description",
    "tags",
    "resources",
    "image",
    "import",
    "mount",
    "run",
    "export",
    "env",
    "ports",
}
REQUIRED_KEYS = ("name", "image", "resources", "run")
RESOURCE_KEYS = {"cluster", "preset"}
RUN_STEP_KEYS = {"command", "workdir"}
PORT_KEYS = {"name", "type", "port"}
VOLUME_PREFIXES = ("volume://", "git://", "hf://", "s3://", "gs://", "vessl-dataset://", "vessl-model://")


def validate_run_yaml(doc: Any) -> None:
    """Raise one line for the first key or value VESSL's run YAML does not accept."""
    problem = first_problem(doc)
    if problem:
        raise WmtpError(f"VESSL run YAML: {problem}")


def first_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "expected a mapping at the top level"
    unknown = sorted(set(doc) - TOP_LEVEL_KEYS)
    if unknown:
        return f"{unknown[0]}: not a VESSL run key (allowed: {', '.join(sorted(TOP_LEVEL_KEYS))})"
    for key in REQUIRED_KEYS:
        if not doc.get(key):
            return f"{key}: required"
    checks = [
        check_metadata(doc),
        check_resources(doc["resources"]),
        check_image(doc["image"]),
        check_run(doc["run"]),
        check_env(doc.get("env")),
        check_ports(doc.get("ports")),
    ]
    checks += [check_volumes(section, doc[section]) for section in ("import", "mount", "export") if section in doc]
    return next((problem for problem in checks if problem), None)


def check_metadata(doc: dict) -> str | None:
    if not isinstance(doc["name"], str):
        return "name: expected a string"
    if "description" in doc and not isinstance(doc["description"], str):
        return "description: expected a string"
    tags = doc.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        return "tags: expected a list of strings"
    return None


def check_resources(resources: Any) -> str | None:
    if not isinstance(resources, dict):
        return "resources: expected a mapping {cluster, preset}"
    unknown = sorted(set(resources) - RESOURCE_KEYS)
    if unknown:
        return f"resources.{unknown[0]}: not a resources key (allowed: cluster, preset)"
    for key in RESOURCE_KEYS:
        if not isinstance(resources.get(key), str) or not resources[key]:
            return f"resources.{key}: expected a non-empty string"
    return None


def check_image(image: Any) -> str | None:
    if isinstance(image, dict):
        image = image.get("url")
    return None if isinstance(image, str) and image.strip() else "image: expected an image URL"


def check_run(run: Any) -> str | None:
    if not isinstance(run, list) or not run:
        return "run: expected a list of {command, workdir}"
    for index, step in enumerate(run):
        where = f"run[{index}]"
        if not isinstance(step, dict):
            return f"{where}: expected a mapping {{command, workdir}}"
        unknown = sorted(set(step) - RUN_STEP_KEYS)
        if unknown:
            return f"{where}.{unknown[0]}: not a run key (allowed: command, workdir)"
        if not isinstance(step.get("command"), str) or not step["command"].strip():
            return f"{where}.command: expected a non-empty string"
        if "workdir" in step and not (isinstance(step["workdir"], str) and step["workdir"].startswith("/")):
            return f"{where}.workdir: expected an absolute path"
    return None


def check_env(env: Any) -> str | None:
    if env is None:
        return None
    if not isinstance(env, dict):
        return "env: expected a mapping NAME: value or NAME: {secret: NAME}"
    for key, value in env.items():
        if isinstance(value, dict):
            if set(value) != {"secret"} or not isinstance(value["secret"], str):
                return f"env.{key}: expected {{secret: NAME}}"
        elif not isinstance(value, str):
            return f"env.{key}: expected a string value or {{secret: NAME}} (got {type(value).__name__})"
    return None


def check_volumes(section: str, volumes: Any) -> str | None:
    if not isinstance(volumes, dict):
        return f"{section}: expected a mapping /container/path: source"
    for path, source in volumes.items():
        where = f"{section}.{path}"
        if not isinstance(path, str) or not path.startswith("/"):
            return f"{where}: expected an absolute container path"
        if isinstance(source, dict) and section == "import" and set(source) == {"git"}:
            if not isinstance(source["git"], dict) or not source["git"].get("url"):
                return f"{where}.git.url: required"
        elif not (isinstance(source, str) and source.startswith(VOLUME_PREFIXES)):
            return f"{where}: expected a source starting with one of {', '.join(VOLUME_PREFIXES)}"
    return None


def check_ports(ports: Any) -> str | None:
    if ports is None:
        return None
    if not isinstance(ports, list) or not all(isinstance(p, dict) and set(p) <= PORT_KEYS for p in ports):
        return "ports: expected a list of {name, type, port}"
    return None


# ---------------------------------------------------------------- local-docker: compose file

# The Host header of the trainer's MLflow requests (MLFLOW_TRACKING_URI=http://mlflow:5000): the service's name.
TRAINER_MLFLOW_HOST = "mlflow:5000"


def validate_compose(doc: Any, text: str, context: JobContext | None = None) -> None:
    """Our structural rules first (one clear line each), then the Compose binary's own verdict."""
    problem = structure_problem(doc, context)
    if problem:
        raise WmtpError(f"compose file: {problem}")
    check_with_binary(text)


def structure_problem(doc: Any, context: JobContext | None) -> Optional[str]:
    """The first way the compose file breaks our template's structure, or None."""
    services = (doc or {}).get("services") or {}
    trainer, mlflow = services.get("trainer"), services.get("mlflow")
    if not trainer or not mlflow:
        return "services.trainer and services.mlflow are required"
    if context and any((service.get("labels") or {}).get("wmtp.job") != context.name for service in (trainer, mlflow)):
        return "services.*.labels: wmtp.job must be the job name (`wmtp ls --target local-docker` finds jobs by it)"
    if not (trainer.get("ipc") == "host" or trainer.get("shm_size")):
        return "services.trainer: needs ipc: host or shm_size (PyTorch workers share memory)"
    if "MLFLOW_TRACKING_URI=http://mlflow:5000" not in (trainer.get("environment") or []):
        return (
            "services.trainer.environment: must report to the mlflow service (MLFLOW_TRACKING_URI=http://mlflow:5000)"
        )
    if TRAINER_MLFLOW_HOST not in allowed_hosts(mlflow.get("command")):
        return (
            f"services.mlflow.command: --allowed-hosts must list {TRAINER_MLFLOW_HOST} (MLflow 3 answers 403 "
            "to any other Host header than its allowed ones, and the trainer sends that one)"
        )
    mounts = [volume for volume in trainer.get("volumes") or [] if isinstance(volume, dict)]
    if not any(volume.get("type") == "bind" and volume.get("target") == "/data/storage" for volume in mounts):
        return "services.trainer.volumes: the storage dir must be bind-mounted at /data/storage"
    gpus = context.settings["gpus"] if context else 0
    devices = (((trainer.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    reserved = [device for device in devices if "gpu" in (device.get("capabilities") or [])]
    if gpus and not reserved:
        return "services.trainer.deploy.resources.reservations.devices: GPUs asked for but none reserved"
    return None


def allowed_hosts(command: Any) -> list[str]:
    """The Host headers an `mlflow server …` command line accepts besides MLflow's defaults ([] if none)."""
    args = [str(arg) for arg in command] if isinstance(command, list) else str(command or "").split()
    for index, arg in enumerate(args):
        if arg == "--allowed-hosts" and index + 1 < len(args):
            return [host.strip() for host in args[index + 1].split(",")]
        if arg.startswith("--allowed-hosts="):
            return [host.strip() for host in arg.split("=", 1)[1].split(",")]
    return []


def check_compose(doc: Any, manifest: str, context: JobContext) -> None:
    """The structure only: the Compose binary's verdict is part of every submit already."""
    problem = structure_problem(doc, context)
    if problem:
        raise WmtpError(f"compose file: {problem}")


# ---------------------------------------------------------------- skypilot: task YAML


@functools.cache
def skypilot_home() -> str:
    """A HOME of its own for the real SDK: importing `sky` creates ~/.sky (state databases, catalog dirs),
    and a developer's ~/.sky/config.yaml must not change what the tests validate."""
    home = tempfile.mkdtemp(prefix="wmtp-skypilot-home-")
    atexit.register(shutil.rmtree, home, True)
    return home


def no_network(*args, **kwargs):
    raise OSError("the tests validate SkyPilot tasks offline: no network call is allowed")


@contextlib.contextmanager
def offline_skypilot() -> Iterator[Any]:
    """The real `sky` package with HOME in a temporary dir, no SKYPILOT_CONFIG, usage reports off and
    sockets refused (SkyPilot fetches its catalogs when asked about clouds or accelerators: a validation
    that needed them would fail here, not reach out)."""
    saved = {key: os.environ.get(key) for key in ("HOME", "SKYPILOT_CONFIG", "SKYPILOT_DISABLE_USAGE_COLLECTION")}
    connect, resolve = socket.socket.connect, socket.getaddrinfo
    os.environ.update(HOME=skypilot_home(), SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    os.environ.pop("SKYPILOT_CONFIG", None)
    socket.socket.connect, socket.getaddrinfo = no_network, no_network
    try:
        import sky

        yield sky
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, resolve
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def validate_skypilot_task(doc: Any, context: JobContext | None = None) -> None:
    """Raise one line: SkyPilot's verdict on the task first, then our template's rules."""
    try:
        with offline_skypilot() as sky:
            envs = doc.get("envs") if isinstance(doc, dict) else None
            envs = envs if isinstance(envs, dict) else {}
            # The names-only variables get a placeholder, as `--env NAME` / our submit give them a value.
            task = sky.Task.from_yaml_config(
                copy.deepcopy(doc), env_overrides=[(name, "") for name, value in envs.items() if value is None]
            )
            # Task.validate() would also check the resources against the clouds' catalogs (a download).
            task.validate_name()
            task.validate_run()
            task.expand_and_validate_workdir()
    except Exception as exc:  # jsonschema's via InvalidSkyPilotConfigError, ValueError, AssertionError
        raise WmtpError(f"SkyPilot task: {' '.join(str(exc).split()) or type(exc).__name__}") from None
    problem = skypilot_template_problem(doc, context) if context is not None else None
    if problem:
        raise WmtpError(f"SkyPilot task: {problem}")


# The only variables a task may give values: everything else is a name filled at launch (`NAME: null`).
SKYPILOT_LITERAL_ENV = ("WMTP_JOB_NAME", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
SKYPILOT_NODE_VARIABLES = ("$SKYPILOT_NUM_NODES", "$SKYPILOT_NODE_RANK", "$SKYPILOT_NODE_IPS")


def skypilot_template_problem(doc: dict, context: JobContext) -> Optional[str]:
    """The first way a rendered task breaks our template's rules, or None."""
    settings = context.settings
    resources = doc.get("resources") or {}
    if doc.get("name") != context.name or doc.get("num_nodes") != settings["num_nodes"]:
        return "name and num_nodes must be the job name and targets.skypilot.num_nodes"
    if resources.get("accelerators") != f"{settings['accelerator']}:{settings['gpus_per_node']}":
        return "resources.accelerators must be targets.skypilot.accelerator:gpus_per_node"
    if resources.get("image_id") != f"docker:{settings['image']}":
        return "resources.image_id must be docker:targets.skypilot.image (the trainer image)"
    if (doc.get("file_mounts") or {}).get("/data/storage") != {"source": settings["bucket"], "mode": "MOUNT"}:
        return "file_mounts./data/storage: the bucket must be mounted there (MOUNT)"
    envs = doc.get("envs") or {}
    literal = SKYPILOT_LITERAL_ENV + (("MLFLOW_TRACKING_URI",) if settings.get("mlflow_uri") else ())
    valued = sorted(name for name, value in envs.items() if value is not None and name not in literal)
    if valued:
        return f"envs.{valued[0]}: only names (null) may be passed, never a value"
    missing = [name for name in context.secret_names if name not in envs or envs[name] is not None]
    if missing:
        return f"envs.{missing[0]}: every env.secrets name must be listed (null)"
    if envs.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT") != str(context.preemption_grace_s):
        return (
            f"envs.TORCH_ELASTIC_SHUTDOWN_TIMEOUT must be distributed.preemption_grace_s ({context.preemption_grace_s})"
        )
    return skypilot_run_problem(str(doc.get("run") or ""), context)


def skypilot_run_problem(run: str, context: JobContext) -> Optional[str]:
    """The run command: torchrun in /data (exec'd, so it gets SIGTERM), the job's layout, the trainer's args."""
    words = shlex.split(run)
    if "cd /data && exec torchrun " not in run:
        return "run: must be `cd /data && exec torchrun …` (the trainer's working dir; torchrun gets the signals)"
    multi = context.settings["num_nodes"] > 1
    if multi and not all(variable in run for variable in SKYPILOT_NODE_VARIABLES):
        return f"run: a multi-node job takes its rendezvous from {', '.join(SKYPILOT_NODE_VARIABLES)}"
    if not multi and "--standalone" not in words:
        return "run: a one-node job runs torchrun --standalone"
    if f"--nproc_per_node={context.nproc_per_node}" not in words:
        return f"run: --nproc_per_node must be distributed.nproc_per_node ({context.nproc_per_node})"
    if words[-len(context.trainer_args) :] != context.trainer_args:
        return "run: must end with the trainer's arguments, as the context gives them"
    return None


RULES = {
    "k8s": lambda doc, manifest, context: validate_pytorchjob(doc, context),
    "vessl": lambda doc, manifest, context: validate_run_yaml(doc),
    "local-docker": check_compose,
    "skypilot": lambda doc, manifest, context: validate_skypilot_task(doc, context),
}
