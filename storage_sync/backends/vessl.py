"""VESSL volumes: `vessl://STORAGE/VOLUME[/path]` → federated S3 credentials from the VESSL API → S3.

Uses the VESSL SDK (`pip install 'weighted-mtp[vessl]'`): `vessl.storage.volume_federate(storage_name,
volume_name, federation_type)` returns the volume's bucket, path prefix, region, endpoint and a
short-lived STS token (`s3_token.access_key_id / secret_access_key / session_token / expiration`).
The token is refreshed through the same call when it nears expiry, as the SDK's own transfers do.
The SDK finds its access token in `VESSL_ACCESS_TOKEN`, `~/.vessl/config` (`vessl configure`) or
the run context inside a VESSL run, and the organization in `VESSL_DEFAULT_ORGANIZATION` or the config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from wmtp_storage_sync.backends.s3 import S3Backend
from wmtp_storage_sync.destination import VesslLocation
from wmtp_storage_sync.errors import SyncError
from wmtp_storage_sync.vessl_telemetry import opt_out_of_vessl_telemetry

INSTALL_HINT = "pip install 'weighted-mtp[vessl]'"
TOKEN_HINT = "set VESSL_ACCESS_TOKEN (and VESSL_DEFAULT_ORGANIZATION) or run `vessl configure`"


def open_vessl_volume(
    location: VesslLocation,
    *,
    write: bool,
    endpoint_url: Optional[str] = None,
    jobs: int = 10,
    part_size: int = 16 * 1024 * 1024,
    journal_dir: Optional[Path] = None,
) -> S3Backend:
    """An S3 backend on the bucket and prefix behind a VESSL volume, with refreshing federated credentials."""
    url = location.url()
    vessl = _import_sdk(url)
    federate = _federator(vessl, location, "write" if write else "read")
    info = federate()
    if info.type != "s3":
        raise SyncError(f"{url}: the volume is stored on {info.type!r}; only S3-backed VESSL volumes can be synced")
    prefix = "/".join(p for p in ((info.path or "").strip("/"), location.subpath) if p)
    endpoint = endpoint_url or os.environ.get("VESSL_VOLUME_S3_API_ENDPOINT_URL") or info.endpoint or None
    insecure = os.environ.get("VESSL_INSECURE_SKIP_TLS_VERIFY", "").lower() in ("1", "true", "yes")
    return S3Backend(
        info.bucket_name,
        prefix,
        endpoint_url=endpoint,
        credential_refresher=(lambda: _credentials(federate(), url)) if info.s3_token is not None else None,
        initial_credentials=_credentials(info, url) if info.s3_token is not None else None,
        region=info.region or None,
        path_style=bool(info.force_path_style),
        verify_tls=not insecure,
        jobs=jobs,
        part_size=part_size,
        journal_dir=journal_dir,
        url=url,
    )


def _import_sdk(url: str):
    # The SDK collects usage data and reports errors to Sentry unless told not to; read at its import.
    opt_out_of_vessl_telemetry()
    try:
        import vessl
    except ImportError:
        raise SyncError(f"{url}: VESSL volumes need the VESSL SDK, which is not installed ({INSTALL_HINT})") from None
    if getattr(vessl, "vessl_api", None) is None or getattr(vessl.vessl_api, "user", None) is None:
        # The SDK tries the token at import (env, config file, run context) and leaves `user` unset if none works.
        raise SyncError(f"{url}: no valid VESSL access token; {TOKEN_HINT}")
    return vessl


def _federator(vessl, location: VesslLocation, federation_type: str):
    """A function returning fresh federation info, turning SDK errors into one line (no secrets)."""
    url = location.url()

    def federate():
        try:
            return vessl.storage.volume_federate(
                storage_name=location.storage, volume_name=location.volume, federation_type=federation_type
            )
        except Exception as exc:  # the SDK's VesslException tree, network errors, missing organization
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise SyncError(
                f"{url}: VESSL did not grant {federation_type} access ({type(exc).__name__}: {reason})"
            ) from None

    return federate


def _credentials(info, url: str) -> dict:
    """botocore's refreshable-credential metadata from a federation response."""
    token = info.s3_token
    if token is None:
        raise SyncError(f"{url}: VESSL returned no S3 token for the volume")
    expiration = token.expiration
    return {
        "access_key": token.access_key_id,
        "secret_key": token.secret_access_key,
        "token": token.session_token,
        "expiry_time": expiration.isoformat() if hasattr(expiration, "isoformat") else str(expiration),
    }
