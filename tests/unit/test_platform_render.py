"""Job names, target settings and Jinja rendering: quoting, StrictUndefined, one-line errors."""

from __future__ import annotations

import datetime as dt

import jinja2
import pytest
import yaml

from wmtp.errors import WmtpError
from wmtp_cli.platform.context import JobContext
from wmtp_cli.platform.names import default_job_name, validate_job_name
from wmtp_cli.platform.registry import get_target
from wmtp_cli.platform.render import render_manifest, yaml_value

HOSTILE_STRINGS = [
    "a: b",
    'x"\nkind: Secret\nmetadata: {name: pwned}',
    "it's # not a comment",
    "{curly: [brackets]}",
    "- list item",
    "&anchor *alias !!python/object",
    "line\u2028separator\u0085next",
    "ünïcödé ✓",
    "",
    "null",
    "true",
    "007",
]


@pytest.mark.parametrize("value", HOSTILE_STRINGS)
def test_yaml_value_reads_back_as_the_same_single_string(value):
    document = yaml.safe_load(f"key: {yaml_value(value)}\nother: 1\n")
    assert document == {"key": value, "other": 1}


def test_yaml_value_keeps_lists_and_numbers():
    args = ["--set", "data.train=a b: c", "--run-dir", "x"]
    assert yaml.safe_load(f"args: {yaml_value(args)}")["args"] == args
    assert yaml.safe_load(f"n: {yaml_value(4)}")["n"] == 4


@pytest.mark.parametrize("name", ["wmtp-smoke-1", "a", "a" * 63])
def test_valid_job_names_pass(name):
    assert validate_job_name(name) == name


@pytest.mark.parametrize("name", ["Upper", "under_score", "1starts-with-digit", "ends-", "a" * 64, "a:b", "a b", ""])
def test_invalid_job_names_are_one_line_naming_the_option(name):
    with pytest.raises(WmtpError) as info:
        validate_job_name(name)
    assert str(info.value).startswith(f"--name {name!r}: must be a DNS-1035 label") and "\n" not in str(info.value)


def test_default_job_name_is_a_label_even_for_odd_experiment_names():
    name = default_job_name("My_Exp.v2" * 10, now=dt.datetime(2025, 1, 2, 3, 4, 5))
    assert validate_job_name(name) == name and name.endswith("-20250102-030405") and name.startswith("wmtp-my-exp-v2")


def target_settings(target: str, targets: dict):
    """A target's settings model applied to a spec's `targets:` (what every command does first)."""
    return get_target(target).settings(targets)


def k8s_settings(**changes):
    base = {
        "image": "ghcr.io/x/y:1",
        "namespace": "wmtp",
        "nodes": 1,
        "gpus_per_node": 4,
        "pvc": "wmtp-storage",
        "mlflow_secret": "wmtp-mlflow",
    }
    return {"k8s": {**base, **changes}}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"gpus_per_node": -1}, "targets.k8s.gpus_per_node: Input should be greater than or equal to 0 (got -1)"),
        ({"gpus_per_node": "four"}, "targets.k8s.gpus_per_node: Input should be a valid integer (got 'four')"),
        ({"namespace": "Team_A"}, "targets.k8s.namespace: expected a DNS-1123 label"),
        ({"image": "bad image\nx: 1"}, "targets.k8s.image: expected a container image reference"),
        ({"clean_pod_policy": "Sometimes"}, "targets.k8s.clean_pod_policy: Input should be 'None', 'Running' or 'All'"),
        ({"bogus": 1}, "targets.k8s.bogus: unknown key"),
    ],
)
def test_bad_target_values_are_one_line_naming_the_key(changes, expected):
    with pytest.raises(WmtpError) as info:
        target_settings("k8s", k8s_settings(**changes))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_missing_target_section_is_named():
    with pytest.raises(WmtpError, match=r"^targets.vessl: missing"):
        target_settings("vessl", {})


def context(settings: dict, target: str = "k8s") -> JobContext:
    return JobContext(
        target=target,
        name="wmtp-t",
        experiment="smoke",
        experiment_name="smoke",
        stages=["critic"],
        nproc_per_node=1,
        run_dir="storage/checkpoints/wmtp-t",
        output_root="storage/checkpoints",
        trainer_args=["-m", "wmtp.train", "smoke", "--run-dir", "storage/checkpoints/wmtp-t"],
        secret_names=["HF_TOKEN"],
        preemption_grace_s=600,
        settings=settings,
    )


def test_strict_undefined_names_the_missing_template_value():
    settings = target_settings("k8s", k8s_settings()).model_dump()
    del settings["pvc"]
    with pytest.raises(WmtpError) as info:
        render_manifest(get_target("k8s").template, context(settings), filters=get_target("k8s").template_filters())
    assert str(info.value) == "k8s/pytorchjob.yaml.j2: undefined template value: 'dict object' has no attribute 'pvc'"


def test_rendered_manifest_quotes_every_hostile_value():
    settings = target_settings("k8s", k8s_settings()).model_dump()
    job = context(settings)
    job.trainer_args = ["-m", "wmtp.train", "smoke", "--set", 'data.train=x"\n    evil: [1]', "--run-dir", "d"]
    k8s = get_target("k8s")
    document = yaml.safe_load(render_manifest(k8s.template, job, filters=k8s.template_filters()))
    container = document["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["args"] == job.trainer_args and "evil" not in container


def test_jinja_environment_is_strict():
    from wmtp_cli.platform.render import template_environment

    env = template_environment("k8s")
    assert env.undefined is jinja2.StrictUndefined


def vessl_settings(**changes):
    base = {
        "image": "ghcr.io/x/y:1",
        "cluster": "c",
        "preset": "p",
        "storage_volume": "s/v",
        "checkpoint_volume": "s/c",
    }
    return {"vessl": {**base, **changes}}


@pytest.mark.parametrize(
    "key, url",
    [
        ("mlflow_uri", "https://alice:hunter2-pass@mlflow.example.com"),
        ("mlflow_uri", "http://ghp_tokenvalue123@mlflow.example.com:5000/"),
        ("code_repo", "https://x-access-token:ghs_tokenvalue123@github.com/org/repo.git"),
        ("code_repo", "https://ghp_tokenvalue123@github.com/org/repo.git"),
        ("code_repo", "ssh://git:hunter2-pass@example.com/org/repo.git"),
    ],
)
def test_credentials_in_a_url_setting_are_refused_without_echoing_them(key, url):
    with pytest.raises(WmtpError) as info:
        target_settings("vessl", vessl_settings(**{key: url}))
    message = str(info.value)
    assert message.startswith(f"targets.vessl.{key}: must not contain credentials (") and "\n" not in message
    assert "hunter2" not in message and "tokenvalue" not in message


@pytest.mark.parametrize(
    "key, url",
    [
        ("mlflow_uri", "https://mlflow.example.com:5000/path"),
        ("code_repo", "git@github.com:org/repo.git"),
        ("code_repo", "ssh://git@github.com/org/repo.git"),
    ],
)
def test_urls_without_credentials_pass(key, url):
    assert getattr(target_settings("vessl", vessl_settings(**{key: url})), key) == url
