"""Secrets, hardened: which values count as credentials, the check of a manifest's *decoded* strings,
URL userinfo anywhere in a value, error messages scrubbed of every credential, compose's `$$`."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from wmtp.errors import WmtpError
from wmtp_cli.platform.jobs import prepare_job
from wmtp_cli.platform.registry import names
from wmtp_cli.secrets import (
    credentials,
    escape_compose,
    find_url_credentials,
    is_credential_name,
    refuse_manifest_credentials,
    scrub,
)

# Credentials whose manifest text differs from their value once quoted (JSON escapes `"`, `\`, non-ASCII;
# the shell quoting of VESSL's command and of the local command line splits `'`; compose doubles `$`).
SECRETS = {
    "double quote": 'tok"9f3kQ2xZ',
    "backslash": "tok\\9f3kQ2xZ",
    "single quote": "tok'9f3kQ2xZ",
    "non-ascii": "tok-é9f3kQ2xZ",
    "line separator": "tok\u20289f3kQ2xZ",
    "dollar": "tok$9f3kQ2xZ",
}
TARGETS = names()  # every registered target


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No credential of the developer's shell or kubeconfig takes part."""
    for name in list(os.environ):
        if is_credential_name(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def checked(job):
    return job.context.trainer_args if job.document is None else job.document


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", SECRETS)
def test_a_quoted_secret_is_found_in_every_targets_parsed_manifest(kind, target, clean_env, monkeypatch):
    secret = SECRETS[kind]
    job = prepare_job("smoke", target, [f"tracking.run_name=run-{secret}"], name="wmtp-sec")  # not a secret yet
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(WmtpError, match="^the manifest would contain the value of secret HF_TOKEN; ") as caught:
        refuse_manifest_credentials(checked(job), [], {})
    assert secret not in str(caught.value)


@pytest.mark.parametrize("target", ["vessl", "k8s", "local-docker"])
def test_an_env_file_value_is_found_in_the_manifest_whatever_its_name(target, clean_env):
    secret = 'plain"Name\\4471'
    job = prepare_job("smoke", target, [f"tracking.run_name={secret}"], name="wmtp-sec")
    with pytest.raises(WmtpError, match="value of secret SOME_SETTING"):
        refuse_manifest_credentials(checked(job), [], {"SOME_SETTING": secret})


def test_kubeconfig_tokens_and_passwords_are_credentials(clean_env, monkeypatch, tmp_path):
    job = prepare_job("smoke", "k8s", ["tracking.run_name=x-kube-token-7f1e2d3c"], name="wmtp-sec")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "users": [
                    {"name": "ci", "user": {"token": "kube-token-7f1e2d3c"}},
                    {"name": "admin", "user": {"username": "admin", "password": "kube-pw-5a6b7c8d"}},
                    {"name": "short", "user": {"token": "abc"}},  # below the minimum length: not searched for
                ]
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}{os.pathsep}{kubeconfig}")
    assert credentials() == {
        "kube-token-7f1e2d3c": "the kubeconfig's token of user ci",
        "kube-pw-5a6b7c8d": "the kubeconfig's password of user admin",
    }
    with pytest.raises(WmtpError, match="value of the kubeconfig's token of user ci"):
        refuse_manifest_credentials(job.document, [], {})


@pytest.mark.parametrize(
    "name, counted",
    [
        ("HF_TOKEN", True),
        ("VESSL_ACCESS_TOKEN", True),
        ("AWS_SESSION_TOKEN", True),
        ("MLFLOW_TRACKING_PASSWORD", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("CLIENT_SECRET_FILE", True),
        ("GPG_KEY", True),
        ("API_KEY", True),
        ("HOME", False),
        ("KEYBOARD", False),
        ("TOKENIZERS_PARALLELISM", False),
        ("MLFLOW_TRACKING_URI", False),
    ],
)
def test_credential_names(name, counted):
    assert is_credential_name(name) is counted


def test_short_values_are_not_searched_for(clean_env, monkeypatch):
    monkeypatch.setenv("SHORT_TOKEN", "1234567")  # 7 characters: would match ordinary text by chance
    monkeypatch.setenv("LONG_TOKEN", "12345678")
    assert credentials() == {"12345678": "secret LONG_TOKEN"}


@pytest.mark.parametrize(
    "value, found",
    [
        ("https://alice:pw@host/x", "user:password@"),
        ("see https://alice:pw@host/x for details", "user:password@"),
        ("[a, s3://KEY:SECRET@bucket/p]", "user:password@"),
        ("https://mlflow.example.org/?next=https://tok3n@evil.example.org", "user@ or token@"),
        ("name=run,uri=https://ghp_abc@github.com/org/repo.git", "user@ or token@"),
        ("ssh://git@github.com/org/repo.git", None),
        ("git@github.com:org/repo.git", None),
        ("https://mlflow.example.org/users/@me", None),
        ("mail alice@example.org", None),
    ],
)
def test_url_credentials_anywhere_in_a_value(value, found):
    assert find_url_credentials(value) == found


@pytest.mark.parametrize("kind", SECRETS)
def test_scrub_hides_every_quoted_form(kind, clean_env, monkeypatch):
    secret = SECRETS[kind]
    monkeypatch.setenv("MY_PASSWORD", secret)
    for shown in (secret, repr(secret), repr(f"a{secret}'\"b"), json.dumps(secret), f"x{secret}y"):
        message = f"--name {shown}: must be a DNS-1035 label"
        assert secret not in scrub(message) and "***" in scrub(message)
        assert repr(secret)[1:-1] not in scrub(message)


def test_escape_compose_doubles_every_dollar():
    assert escape_compose({"a": ["${X}", "$$", 3, None], "b$": "x$y"}) == {
        "a": ["$${X}", "$$$$", 3, None],
        "b$$": "x$$y",
    }
