"""Job platform: experiment spec → rendered, validated manifest → VESSL / Kubernetes / compose / local.

`jobs.prepare_job` renders and validates; `jobs.submit_job`, `job_status` and `job_logs` talk to the
target. Templates live in vessl/, k8s/ and docker/ (shipped as wmtp_assets.* package data).
"""
