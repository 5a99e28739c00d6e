"""`wmtp image build` / `wmtp image push`: the trainer image through the docker SDK (needs an engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import typer

from wmtp.errors import WmtpError
from wmtp_cli.common import WmtpTyper

app = WmtpTyper(help="Build and push the trainer image (docker/Dockerfile).")


def default_image() -> str:
    """The image jobs/defaults.yaml runs (the first target's with one; every target uses the same one)."""
    from wmtp.assets import asset_dir
    from wmtp.train.config import read_yaml
    from wmtp_cli.platform.registry import targets as registered

    targets = read_yaml(asset_dir("jobs") / "defaults.yaml").get("targets") or {}
    for target in registered().values():
        image = (targets.get(target.spec_key) or {}).get("image")
        if image:
            return image
    raise WmtpError("jobs/defaults.yaml: targets.*.image: no image configured; pass --tag")


def docker_client():
    """A docker SDK client whose engine answered a ping, or one clear line."""
    from wmtp_cli.platform.plugins.local_docker import require_engine

    require_engine(instead="")  # build and push need the engine itself
    import docker

    return docker.from_env()


def split_tag(image: str) -> tuple[str, str]:
    """`registry/name:tag` → (`registry/name`, `tag`); a registry port is not a tag."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repository, tag


def echo_stream(events: Iterable[dict], action: str) -> None:
    """Print the engine's progress lines; an error event becomes one clear line."""
    for event in events:
        if "error" in event:
            raise WmtpError(f"{action} failed: {' '.join(str(event['error']).split())}")
        text = event.get("stream") or event.get("status")
        if text and text.strip():
            typer.echo(text.rstrip())


@app.command("build")
def build(
    tag: Optional[str] = typer.Option(None, help="Image reference; default: the image in jobs/defaults.yaml."),
    dockerfile: Optional[Path] = typer.Option(
        None, "--file", "-f", help="Dockerfile; default CONTEXT/docker/Dockerfile."
    ),
    context: Path = typer.Option(Path("."), help="Build context: the checkout (its .dockerignore applies)."),
) -> None:
    """Build the trainer image from the checkout (docker/Dockerfile, context = the checkout)."""
    relative = dockerfile_in_context(dockerfile, context)
    image = tag or default_image()
    client = docker_client()
    echo_stream(
        client.api.build(path=str(context), dockerfile=relative, tag=image, rm=True, decode=True), f"building {image}"
    )
    typer.echo(f"built {image}")


def dockerfile_in_context(dockerfile: Optional[Path], context: Path) -> str:
    """The Dockerfile's path relative to the build context (what the engine expects), or one clear line."""
    if not context.is_dir():
        raise WmtpError(f"{context}: build context is not a directory")
    dockerfile = dockerfile if dockerfile is not None else context / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        raise WmtpError(f"{dockerfile}: Dockerfile not found")
    try:
        return dockerfile.resolve().relative_to(context.resolve()).as_posix()
    except ValueError:
        raise WmtpError(f"{dockerfile}: the Dockerfile must be inside the build context {context}") from None


@app.command("push")
def push(
    tag: Optional[str] = typer.Option(None, help="Image reference; default: the image in jobs/defaults.yaml."),
) -> None:
    """Push the trainer image (registry login from ~/.docker/config.json, e.g. `docker login ghcr.io`)."""
    image = tag or default_image()
    repository, version = split_tag(image)
    client = docker_client()
    echo_stream(client.api.push(repository, tag=version, stream=True, decode=True), f"pushing {image}")
    typer.echo(f"pushed {image}")


def register(parent: typer.Typer) -> None:
    """Add the `image` command group to `parent`."""
    parent.add_typer(app, name="image")
