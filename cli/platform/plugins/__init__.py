"""Job targets, one module each: a `Target` subclass and `TARGET = ItsTarget()` (see ../target.py).

`wmtp_cli.platform.registry` imports every module here; the module's name is the target's key under
`targets:` in jobs/defaults.yaml (`local_docker` ↔ `--target local-docker`).
"""
