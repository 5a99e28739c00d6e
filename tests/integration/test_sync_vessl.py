"""`vessl://STORAGE/VOLUME` destinations: federated S3 credentials from the VESSL SDK, then plain S3.

The VESSL SDK is an optional extra and its API needs an account, so these tests put a stand-in for
the SDK's documented surface (`vessl.vessl_api.user`, `vessl.storage.volume_federate`) in
`sys.modules`, pointing the federation at the local moto server; the transfer is the real S3 path.
"""

from __future__ import annotations

import datetime
import sys
import types
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from tests.s3_server import make_tree
from wmtp_cli.main import app
from wmtp_storage_sync import SyncError, SyncOptions, sync

SESSION_TOKEN = "FEDERATED-SESSION-TOKEN-must-never-be-printed"
SECRET_KEY = "FEDERATED-SECRET-KEY-must-never-be-printed"


RESEARCHER = SimpleNamespace(username="researcher")  # what vessl.init returns for a logged-in user


def fake_sdk(monkeypatch, *, federate, user=RESEARCHER) -> list[dict]:
    """Install a stand-in `vessl` module; returns the list of `volume_federate` calls it receives."""
    calls: list[dict] = []

    def volume_federate(storage_name, volume_name, federation_type, **kwargs):
        calls.append({"storage": storage_name, "volume": volume_name, "type": federation_type})
        return federate(storage_name, volume_name)

    module = types.ModuleType("vessl")
    module.vessl_api = SimpleNamespace(user=user)
    module.storage = SimpleNamespace(volume_federate=volume_federate)
    monkeypatch.setitem(sys.modules, "vessl", module)
    return calls


def s3_volume(bucket_name: str, endpoint: str):
    def federate(storage_name, volume_name):
        token = SimpleNamespace(
            access_key_id="ASIAFEDERATED",
            secret_access_key=SECRET_KEY,
            session_token=SESSION_TOKEN,
            expiration=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1),
        )
        return SimpleNamespace(
            type="s3",
            bucket_name=bucket_name,
            path=f"volumes/{storage_name}/{volume_name}/",
            region="us-east-1",
            endpoint=endpoint,
            force_path_style=True,
            s3_token=token,
        )

    return federate


def test_volume_resolves_to_federated_s3_and_round_trips(s3, bucket, moto_endpoint, s3_env, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)  # only the federated credentials can sign these requests
    monkeypatch.delenv("ENABLE_SENTRY", raising=False)
    monkeypatch.delenv("VESSL_DATA_COLLECTION_OPT_OUT", raising=False)
    calls = fake_sdk(monkeypatch, federate=s3_volume(bucket, moto_endpoint))
    root = make_tree(s3_env / "storage", {"models_v2/m/model.safetensors": 40_000, "models_v2/m/params.json": 30})

    result = CliRunner().invoke(app, ["sync-storage", "--root", str(root), "--dest", "vessl://team/models/v2"])
    assert result.exit_code == 0, result.output
    assert "uploaded 2 file(s)" in result.output and "vessl://team/models/v2" in result.output
    assert SESSION_TOKEN not in result.output and SECRET_KEY not in result.output
    assert calls == [{"storage": "team", "volume": "models", "type": "write"}]
    environ = __import__("os").environ  # the SDK's telemetry stays off
    assert (environ["ENABLE_SENTRY"], environ["VESSL_DATA_COLLECTION_OPT_OUT"]) == ("false", "true")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        "volumes/team/models/v2/models_v2/m/model.safetensors",
        "volumes/team/models/v2/models_v2/m/params.json",
        "volumes/team/models/v2/.wmtp-manifest.json",
    }

    pulled = sync(SyncOptions(dest="vessl://team/models/v2", root=s3_env / "pulled", direction="down", progress=False))
    assert len(pulled.transferred) == 2 and calls[-1]["type"] == "read"
    assert (s3_env / "pulled/models_v2/m/model.safetensors").read_bytes() == (
        root / "models_v2/m/model.safetensors"
    ).read_bytes()


def test_telemetry_is_opted_out_before_the_sdk_is_imported(tmp_path, monkeypatch):
    """Both switches, the same ones `wmtp submit --target vessl` sets, are in the environment at import."""
    from wmtp_cli.platform.plugins import vessl as submit_vessl
    from wmtp_storage_sync.backends import vessl as sync_vessl
    from wmtp_storage_sync.vessl_telemetry import VESSL_TELEMETRY_OPT_OUT

    package = tmp_path / "sdk" / "vessl"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os, types\n"
        "at_import = {k: os.environ.get(k) for k in ('VESSL_DATA_COLLECTION_OPT_OUT', 'ENABLE_SENTRY')}\n"
        "vessl_api = types.SimpleNamespace(user=object())\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    for name, importer in (
        ("sync", lambda: sync_vessl._import_sdk("vessl://team/models")),
        ("submit", submit_vessl.import_sdk),
    ):
        monkeypatch.delitem(sys.modules, "vessl", raising=False)
        for key in VESSL_TELEMETRY_OPT_OUT:
            monkeypatch.delenv(key, raising=False)
        assert importer().at_import == {"VESSL_DATA_COLLECTION_OPT_OUT": "true", "ENABLE_SENTRY": "false"}, name
    monkeypatch.delitem(sys.modules, "vessl", raising=False)


def test_missing_sdk_is_one_clear_line(s3_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "vessl", None)  # import vessl → ImportError, installed or not
    with pytest.raises(
        SyncError,
        match=r"^vessl://team/models: VESSL volumes need the VESSL SDK, which is not installed "
        r"\(pip install 'weighted-mtp\[vessl\]'\)$",
    ):
        sync(SyncOptions(dest="vessl://team/models", root=make_tree(s3_env / "storage", {"a": 1}), progress=False))


def test_missing_token_is_one_clear_line(s3_env, monkeypatch):
    fake_sdk(monkeypatch, federate=s3_volume("unused", "http://127.0.0.1:9"), user=None)
    with pytest.raises(SyncError, match=r"^vessl://team/models: no valid VESSL access token; set VESSL_ACCESS_TOKEN"):
        sync(SyncOptions(dest="vessl://team/models", root=make_tree(s3_env / "storage", {"a": 1}), progress=False))


def test_refused_federation_and_non_s3_volume_are_one_line(s3_env, monkeypatch):
    root = make_tree(s3_env / "storage", {"a": 1})

    def refuse(storage_name, volume_name):
        raise RuntimeError("Volume 'nope' not found in storage 'team'\nHTTP 404 …")

    fake_sdk(monkeypatch, federate=refuse)
    with pytest.raises(
        SyncError,
        match=r"^vessl://team/nope: VESSL did not grant write access "
        r"\(RuntimeError: Volume 'nope' not found in storage 'team'\)$",
    ):
        sync(SyncOptions(dest="vessl://team/nope", root=root, progress=False))

    fake_sdk(monkeypatch, federate=lambda s, v: SimpleNamespace(type="gcs", s3_token=None))
    with pytest.raises(SyncError, match="stored on 'gcs'; only S3-backed VESSL volumes"):
        sync(SyncOptions(dest="vessl://team/models", root=root, progress=False))
