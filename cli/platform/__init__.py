"""Job platform: experiment spec → rendered, validated manifest → a target (VESSL / Kubernetes / compose / local).

`registry` lists the targets (one module each in `plugins/`, each a `target.Target`); `jobs.prepare_job`
renders and validates, `jobs.submit_job` submits, `lifecycle` does status / logs / cancel / ls. Templates
live in top-level folders (vessl/, k8s/, docker/), shipped as wmtp_assets.* package data.
"""
