"""The VESSL SDK's telemetry switches, shared by VESSL volume syncs and `wmtp submit --target vessl`.

The SDK reads them from the environment when `vessl` is first imported (vessl.util.constant), so they
are set just before that import. A value the user set explicitly is kept. Kept free of heavy imports:
`wmtp_cli.platform.plugins.vessl` imports it without pulling in the sync engine's backends.
"""

from __future__ import annotations

import os

VESSL_TELEMETRY_OPT_OUT = {"VESSL_DATA_COLLECTION_OPT_OUT": "true", "ENABLE_SENTRY": "false"}


def opt_out_of_vessl_telemetry() -> None:
    """Turn off the SDK's usage data collection and Sentry error reports (unless the user chose otherwise)."""
    for key, value in VESSL_TELEMETRY_OPT_OUT.items():
        os.environ.setdefault(key, value)
