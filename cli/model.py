"""`wmtp model …`: convert Meta checkpoints, build the micro and pycode models, verify and inspect model dirs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wmtp_cli.common import WmtpTyper

app = WmtpTyper(help="Model directories: convert Meta releases, build the micro model, verify.")


@app.command("convert-meta")
def convert_meta_cmd(
    src: Path = typer.Argument(..., help="Meta release dir (consolidated.pth + params.json)."),
    dest: Path = typer.Argument(..., help="New standard model directory to write."),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer.model (default: SRC/ or its parent)."),
) -> None:
    """Write a standard model directory (safetensors, params, tokenizer, metadata.json with SHA-256)."""
    from wmtp.model.checkpoint import TOKENIZER_FILE, convert_meta

    out = convert_meta(src, dest, tokenizer)
    typer.echo(f"wrote {out}")
    if not (out / TOKENIZER_FILE).is_file():
        typer.echo(
            f"warning: no tokenizer.model in {src} or its parent; {out} has no {TOKENIZER_FILE} "
            "(pass --tokenizer FILE to include one)",
            err=True,
        )


@app.command("micro")
def micro_cmd(
    out: Path = typer.Option(Path("storage/models_v2"), help="Parent directory for micro-mtp/ and micro-ref/."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
    vocab_size: int = typer.Option(1024, help="SentencePiece vocabulary size."),
) -> None:
    """Build the micro MTP model and its micro reference LM (random init + locally trained tokenizer)."""
    from wmtp.data.humaneval import humaneval_code_texts
    from wmtp.model.micro import build_micro_models

    say = lambda line: typer.echo(line, err=True)  # noqa: E731 — stderr: stdout keeps the results
    for name, path in build_micro_models(
        out, humaneval_code_texts(), seed=seed, vocab_size=vocab_size, log=say
    ).items():
        typer.echo(f"wrote {name}: {path}")


@app.command("pycode")
def pycode_cmd(
    out: Path = typer.Option(Path("storage/models_v2/pycode-mtp"), help="Model directory to write."),
    data_dir: Path = typer.Option(
        Path("storage/datasets_v2/pycode"),
        help="Pycode dataset folder (prepared or reused; the tokenizer is kept in it, in tokenizer-v<VOCAB>/).",
    ),
    src: Optional[Path] = typer.Option(None, help="Folder of .py files (default: this Python's standard library)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N source files (sorted by path)."),
    steps: int = typer.Option(360, help="Optimizer steps (a step budget: the same run every time)."),
    vocab_size: int = typer.Option(4096, help="SentencePiece vocabulary size."),
    dim: int = typer.Option(256, help="Model width."),
    trunk_layers: int = typer.Option(12, help="Blocks of the shared trunk."),
    head_layers: int = typer.Option(4, help="Prediction heads (one block each)."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
    valid_rows: int = typer.Option(128, help="Valid-split rows of the per-head loss report."),
    prompts: int = typer.Option(32, help="Held-out test-split prompts decoded self-speculatively."),
    max_new_tokens: int = typer.Option(128, help="Tokens generated per prompt at most."),
    overrides: list[str] = typer.Option([], "--set", help="Override KEY.PATH=VALUE of jobs/pycode.yaml (repeatable)."),
    threads: int = typer.Option(
        1,
        help="Torch CPU threads (0: torch's default). One is fastest on a shared 2-core "
        "machine: width-256 matmuls gain little from a second thread and lose much "
        "when it is descheduled.",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild OUT even when it exists."),
) -> None:
    """Train a trunk-heavy MTP model on the Python standard library (tokenizer, data, training, report)."""
    from wmtp.train.pycode_model import PycodeOptions, build_pycode_model, summary_lines

    options = PycodeOptions(
        out=out,
        data_dir=data_dir,
        src=src,
        limit=limit,
        vocab_size=vocab_size,
        dim=dim,
        trunk_layers=trunk_layers,
        head_layers=head_layers,
        steps=steps,
        seed=seed,
        valid_rows=valid_rows,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        overrides=tuple(overrides),
        threads=threads,
    )
    say = lambda line: typer.echo(line, err=True)  # noqa: E731 — stderr: stdout keeps the results
    result = build_pycode_model(options, force=force, log=say)
    for note in result.notes:
        typer.echo(note)
    for line in summary_lines(result):
        typer.echo(line)
    if not result.reused:
        typer.echo(f"wrote {result.out} ({result.out / 'report.json'})")


@app.command("verify")
def verify_cmd(path: Path = typer.Argument(..., help="Standard model directory.")) -> None:
    """Check every file against the size and SHA-256 recorded in metadata.json, then load the weights."""
    from wmtp.model.checkpoint import load_model

    model = load_model(path, verify=True)
    n_params = sum(p.numel() for p in model.parameters())
    heads = model.n_future_tokens
    typer.echo(f"ok: {path} ({n_params:,} parameters, {heads} head{'s' if heads != 1 else ''})")


@app.command("info")
def info_cmd(path: Path = typer.Argument(..., help="Standard model dir or Meta release dir.")) -> None:
    """Print the params and parameter count of a model directory."""
    from wmtp.model.checkpoint import load_model

    model = load_model(path)
    for key, value in model.args.to_params().items():
        typer.echo(f"{key:20s} {value}")
    typer.echo(f"{'parameters':20s} {sum(p.numel() for p in model.parameters()):,}")


@app.command("try-step")
def try_step_cmd(
    path: Path = typer.Argument(..., help="Standard model directory with a tokenizer."),
    text: str = typer.Option("def add(a, b):\n    return a + b\n", help="Text to train on."),
    steps: int = typer.Option(3, help="AdamW steps to take."),
) -> None:
    """One forward/backward per step on a text with the memory-efficient MTP loss; prints per-head loss."""
    import torch

    from wmtp.model import IGNORE_INDEX, load_model, load_tokenizer, mtp_loss_memory_efficient

    model, tokenizer = load_model(path, dtype="float32"), load_tokenizer(path)
    tokens = torch.tensor([tokenizer.encode(text, bos=True, eos=True)])
    n_heads, seq = model.n_future_tokens, tokens.shape[1]
    labels = torch.full((1, seq, n_heads), IGNORE_INDEX)
    for k in range(n_heads):
        labels[0, : seq - k - 1, k] = tokens[0, k + 1 :]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(1, steps + 1):
        optimizer.zero_grad()
        loss = mtp_loss_memory_efficient(model, tokens, labels)
        optimizer.step()
        per_head = " ".join(f"{v:.4f}" for v in loss.per_head.tolist())
        typer.echo(f"step {step}: loss {loss.total.item():.4f}  per head [{per_head}]")


@app.command("export-hf")
def export_hf_cmd(
    model_dir: Path = typer.Argument(..., help="Standard model dir or Meta release dir."),
    out: Path = typer.Argument(..., help="New Hugging Face LlamaForCausalLM directory to write."),
) -> None:
    """Write the next-token path (trunk + head 1 + norm/output) as a transformers Llama dir (extra `hf`)."""
    from wmtp.model.hf import export_hf

    summary = export_hf(model_dir, out)
    dropped = summary["dropped_heads"]
    skipped = f"; {dropped} extra head{'s' if dropped != 1 else ''} not exported" if dropped else ""
    typer.echo(
        f"wrote {out} (LlamaForCausalLM, {summary['layers']} layers = {summary['trunk']} trunk + head 1, "
        f"{summary['dtype']}{skipped})"
    )
    if not summary["tokenizer"]:
        typer.echo(f"warning: {model_dir} has no tokenizer; {out} has weights and config only", err=True)


@app.command("import-hf")
def import_hf_cmd(
    hf_dir: Path = typer.Argument(..., help="Hugging Face Llama dir (config.json + safetensors weights)."),
    out: Path = typer.Argument(..., help="New standard model directory to write."),
    n_future_tokens: int = typer.Option(4, help="Prediction heads; heads 2..n start as copies of the last block."),
) -> None:
    """An MTP model from a Llama: trunk = its first L−1 blocks, head 1 = its last, extra heads = copies of it."""
    from wmtp.model.hf import import_hf

    summary = import_hf(hf_dir, out, n_future_tokens)
    heads = summary["heads"]
    typer.echo(
        f"wrote {out} ({summary['trunk']} trunk blocks + {heads} head{'s' if heads != 1 else ''}; "
        f"heads 2..{heads} copy head 1)"
        if heads > 1
        else f"wrote {out} ({summary['trunk']} trunk blocks + 1 head)"
    )
    if not summary["tokenizer"]:
        typer.echo(f"warning: {hf_dir} has no SentencePiece tokenizer.model; {out} has no tokenizer", err=True)
