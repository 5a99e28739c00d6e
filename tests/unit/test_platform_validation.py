"""The template-invariant checks (tests/template_rules.py): the training-operator's PyTorchJob admission
rules and VESSL's run YAML keys. Each case breaks one rule of a valid rendered manifest and expects the
operator-style message, so that a template change that breaks one is caught (test_render_experiments)."""

from __future__ import annotations

import copy

import pytest

from tests.template_rules import operator_violations, validate_pytorchjob, validate_run_yaml
from wmtp.errors import WmtpError
from wmtp_cli.platform.jobs import prepare_job


@pytest.fixture(scope="module")
def pytorchjob():
    job = prepare_job("baseline", "k8s", ["targets.k8s.nodes=3"], name="wmtp-rules")
    return job.document, job.context


@pytest.fixture(scope="module")
def vessl_run():
    return prepare_job("baseline", "vessl", name="wmtp-rules").document


def master(doc):
    return doc["spec"]["pytorchReplicaSpecs"]["Master"]


def container(doc):
    return master(doc)["template"]["spec"]["containers"][0]


def test_rendered_multi_node_job_follows_every_rule(pytorchjob):
    doc, context = pytorchjob
    assert operator_violations(doc) == []
    validate_pytorchjob(doc, context)
    assert doc["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2


OPERATOR_CASES = [
    (
        "master replicas",
        lambda d: master(d).update(replicas=2),
        "spec.pytorchReplicaSpecs[Master].replicas: Forbidden: must be 1",
    ),
    (
        "master replicas unset",
        lambda d: master(d).pop("replicas"),
        "spec.pytorchReplicaSpecs[Master].replicas: Forbidden: must be 1",
    ),
    (
        "worker replicas",
        lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0),
        "spec.pytorchReplicaSpecs[Worker].replicas: Forbidden: must be at least 1",
    ),
    (
        "container name",
        lambda d: container(d).update(name="trainer"),
        "spec.pytorchReplicaSpecs[Master].template.spec.containers: Required value: must have at least one "
        "container with name pytorch",
    ),
    (
        "image",
        lambda d: container(d).update(image=""),
        "spec.pytorchReplicaSpecs[Master].template.spec.containers[0].image: Required value: must be required",
    ),
    (
        "no containers",
        lambda d: master(d)["template"]["spec"].update(containers=[]),
        "spec.pytorchReplicaSpecs[Master].template.spec.containers: Required value: must be specified",
    ),
    (
        "replica type",
        lambda d: d["spec"]["pytorchReplicaSpecs"].update(Chief=copy.deepcopy(master(d))),
        "spec.pytorchReplicaSpecs[Chief]: Unsupported value: 'Chief'",
    ),
    ("no replicas", lambda d: d["spec"].update(pytorchReplicaSpecs={}), "spec.pytorchReplicaSpecs: Required value"),
    (
        "name",
        lambda d: d["metadata"].update(name="Bad_Name"),
        "metadata.name: Invalid value 'Bad_Name': should match a DNS-1035 label",
    ),
    (
        "elastic without worker",
        lambda d: (d["spec"]["pytorchReplicaSpecs"].pop("Worker"), d["spec"].update(elasticPolicy={"maxReplicas": 2})),
        "spec.pytorchReplicaSpecs[Worker]: Required value: must be configured if elastic policy is used",
    ),
    (
        "elastic nproc",
        lambda d: d["spec"].update(elasticPolicy={"nProcPerNode": 4}),
        "spec.elasticPolicy.nProcPerNode: Forbidden: must not be used with spec.nprocPerNode",
    ),
    (
        "clean pod policy",
        lambda d: d["spec"]["runPolicy"].update(cleanPodPolicy="Always"),
        "spec.runPolicy.cleanPodPolicy: Unsupported value 'Always'",
    ),
    (
        "backoff",
        lambda d: d["spec"]["runPolicy"].update(backoffLimit=-1),
        "spec.runPolicy.backoffLimit: Invalid value -1",
    ),
]


@pytest.mark.parametrize("label, break_rule, expected", OPERATOR_CASES, ids=[case[0] for case in OPERATOR_CASES])
def test_each_operator_rule_violation_is_reported(pytorchjob, label, break_rule, expected):
    doc = copy.deepcopy(pytorchjob[0])
    break_rule(doc)
    with pytest.raises(WmtpError) as info:
        validate_pytorchjob(doc, pytorchjob[1])
    message = str(info.value)
    assert message.startswith(f"PyTorchJob {expected}") and "\n" not in message


PROJECT_CASES = [
    ("shm", lambda d: master(d)["template"]["spec"]["volumes"][0].update(emptyDir={}), "/dev/shm must be an emptyDir"),
    ("gpus", lambda d: container(d)["resources"]["limits"].update({"nvidia.com/gpu": 1}), "nvidia.com/gpu limit 1"),
    ("pvc", lambda d: master(d)["template"]["spec"]["volumes"].pop(), "the storage PVC 'wmtp-storage' is not mounted"),
    ("secret", lambda d: container(d).pop("envFrom"), "MLflow credentials must come from Secret 'wmtp-mlflow'"),
    (
        "plain env",
        lambda d: container(d)["env"].append({"name": "HF_TOKEN", "value": "x"}),
        "env values must be secret references",
    ),
    ("workers", lambda d: d["spec"]["pytorchReplicaSpecs"].pop("Worker"), "Worker replicas must exist exactly when"),
    ("nproc", lambda d: d["spec"].update(nprocPerNode="2"), "spec.nprocPerNode: expected '4'"),
    (
        "pod grace",
        lambda d: master(d)["template"]["spec"].pop("terminationGracePeriodSeconds"),
        "terminationGracePeriodSeconds: 30 must exceed distributed.preemption_grace_s (600)",
    ),
    (
        "torchrun grace",
        lambda d: [v.update(value="30") for v in container(d)["env"] if v["name"] == "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"],
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT must be distributed.preemption_grace_s (600)",
    ),
]


@pytest.mark.parametrize("label, break_rule, expected", PROJECT_CASES, ids=[case[0] for case in PROJECT_CASES])
def test_project_rules_beyond_admission_are_checked(pytorchjob, label, break_rule, expected):
    doc = copy.deepcopy(pytorchjob[0])
    break_rule(doc)
    assert operator_violations(doc) == []
    with pytest.raises(WmtpError, match="^PyTorchJob ") as info:
        validate_pytorchjob(doc, pytorchjob[1])
    assert expected in str(info.value)


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(WmtpError, match="distributed.nproc_per_node 4 exceeds targets.k8s.gpus_per_node 2"):
        prepare_job("baseline", "k8s", ["targets.k8s.gpus_per_node=2"], name="wmtp-gpus")


def test_rendered_vessl_run_uses_only_vessl_keys(vessl_run):
    validate_run_yaml(vessl_run)
    assert set(vessl_run) <= {
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
    assert vessl_run["import"]["/data/storage/"] == "volume://wmtp/storage"
    assert vessl_run["export"]["/data/storage/checkpoints/"] == "volume://wmtp/checkpoints"
    assert vessl_run["env"]["HF_TOKEN"] == {"secret": "HF_TOKEN"}


VESSL_CASES = [
    ("unknown key", lambda d: d.update(replicas=2), "replicas: not a VESSL run key"),
    ("resources key", lambda d: d["resources"].update(gpus=4), "resources.gpus: not a resources key"),
    ("no preset", lambda d: d["resources"].pop("preset"), "resources.preset: expected a non-empty string"),
    ("no image", lambda d: d.pop("image"), "image: required"),
    ("run key", lambda d: d["run"][0].update(shell="bash"), "run[0].shell: not a run key"),
    ("empty command", lambda d: d["run"][0].update(command=" "), "run[0].command: expected a non-empty string"),
    ("env number", lambda d: d["env"].update(WORLD=4), "env.WORLD: expected a string value or {secret: NAME}"),
    (
        "env secret shape",
        lambda d: d["env"].update(HF_TOKEN={"secret": "HF_TOKEN", "value": "x"}),
        "env.HF_TOKEN: expected {secret: NAME}",
    ),
    ("volume prefix", lambda d: d["export"].update({"/out/": "ftp://x"}), "export./out/: expected a source starting"),
    ("relative path", lambda d: d["import"].update({"data/": "volume://a/b"}), "import.data/: expected an absolute"),
]


@pytest.mark.parametrize("label, break_rule, expected", VESSL_CASES, ids=[case[0] for case in VESSL_CASES])
def test_vessl_run_yaml_violations_name_the_key(vessl_run, label, break_rule, expected):
    doc = copy.deepcopy(vessl_run)
    break_rule(doc)
    with pytest.raises(WmtpError) as info:
        validate_run_yaml(doc)
    assert str(info.value).startswith(f"VESSL run YAML: {expected}")
