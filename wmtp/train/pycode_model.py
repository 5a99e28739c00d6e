"""`wmtp model pycode`: a trunk-heavy MTP model trained on the Python standard library, in one command.

    build_pycode_model(PycodeOptions(out=Path("storage/models_v2/pycode-mtp")))

1. **Tokenizer**: SentencePiece BPE (`train_sentencepiece`) on the source text of the pycode *train* split's
   files only (a file's split is `wmtp.data.pycode.split_of` of its path, so no valid/test text is seen).
   Kept in `<data_dir>/tokenizer-v<vocab>/` with the identity of the files it was trained on; reused.
2. **Dataset**: `prepare_pycode(data_dir, …)` with that tokenizer's token budget (reused when unchanged).
3. **Model**: `trunk_heavy_mtp_args` (default 12 trunk + 4 head blocks, width 256), random init.
4. **Training**: `jobs/pycode.yaml` through the training loop `wmtp train` runs (`run_experiment`), with the
   model, data and step count set by `--set` overrides; a step budget, so runs are reproducible.
5. **Report**: unweighted cross-entropy and top-1 accuracy per head on the valid split, and greedy
   self-speculative decoding (acceptance, tokens per forward) on held-out test-split prompts, for the
   trained model and for its random init.
6. **Publish**: the final weights as a standard model dir with `report.json` and `training/` (the run's
   spec, metrics and plots), built in a temp dir beside `out` and renamed into place: `out` is either the
   previous one or the complete new one. An existing `out` built with the same options is reused (its
   report is returned); other options are refused unless `force`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from wmtp.errors import WmtpError

EXPERIMENT = "pycode"
DEFAULT_OUT = Path("storage/models_v2/pycode-mtp")
DEFAULT_DATA = Path("storage/datasets_v2/pycode")
DEFAULT_VOCAB = 4096
DEFAULT_STEPS = 360  # ≈ 2 s a step (batch 4 × ≤ 256 tokens, 1 thread) on this project's 2-core CI machine
REPORT_FILE = "report.json"
TOKENIZER_INFO = "tokenizer.json"
CHUNK_CHARS = 4000  # tokenizer training text: files cut at blank lines into pieces of about this size
MAX_TOKENS = 1024  # the dataset's token budget: the model's context (max_seq_len)

Log = Callable[[str], None]


@dataclass(frozen=True)
class PycodeOptions:
    """Everything that decides the built model (stored in report.json: equal options → reuse)."""

    out: Path = DEFAULT_OUT
    data_dir: Path = DEFAULT_DATA
    src: Optional[Path] = None  # folder of .py files (None: this interpreter's standard library)
    limit: Optional[int] = None  # only the first N source files (tests)
    vocab_size: int = DEFAULT_VOCAB
    dim: int = 256
    trunk_layers: int = 12
    head_layers: int = 4
    steps: int = DEFAULT_STEPS
    seed: int = 0  # random init
    valid_rows: int = 128  # valid-split rows of the per-head loss report
    prompts: int = 32  # test-split prompts decoded self-speculatively
    max_new_tokens: int = 128
    overrides: tuple[str, ...] = ()  # further `--set KEY=VALUE` for the training spec (batch size, lr, …)
    threads: int = 1  # torch CPU threads (0: torch's default); not an identity: results agree up to rounding

    def identity(self) -> dict:
        """The options as stored in report.json (paths as given; `out` and `force`-like flags left out)."""
        shown = dataclasses.asdict(self)
        shown.pop("out")
        shown.pop("threads")
        return {
            k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in shown.items()
        }


@dataclass
class BuildResult:
    out: Path
    report: dict
    reused: bool = False
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- tokenizer


def train_split_files(src: Path, limit: Optional[int]):
    """The pycode selection of `src` and its train-split files (relative path, path)."""
    from wmtp.data.pycode import select_files, split_of

    selection = select_files(src, limit)
    return selection, [(rel, path) for rel, path in selection.files if split_of(rel) == "train"]


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """`text` cut after a blank line once a piece holds `size` characters (SentencePiece skips long lines)."""
    pieces, current, n = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        n += len(line)
        if n >= size and not line.strip():
            pieces.append("".join(current))
            current, n = [], 0
    if current:
        pieces.append("".join(current))
    return pieces


def build_tokenizer(options: PycodeOptions, src: Path, log: Log) -> Path:
    """`<data_dir>/tokenizer-v<vocab>/tokenizer.model` trained on the train split's files; reused when it was
    trained on the same files (their SHA-256) with the same vocabulary. Returns the folder (a tokenizer dir)."""
    from wmtp.common.files import write_json_atomic
    from wmtp.data.pycode import Selection, read_source
    from wmtp.model.tokenizer import train_sentencepiece

    selection, files = train_split_files(src, options.limit)
    if not files:
        raise WmtpError(f"{src}: no source file falls in the pycode train split (limit {options.limit})")
    identity = {
        "vocab_size": options.vocab_size,
        "train_files": len(files),
        "chunk_chars": CHUNK_CHARS,
        "train_files_sha256": Selection(src, files).sha256(),
        "src": str(src.resolve()),
    }
    folder = Path(options.data_dir) / f"tokenizer-v{options.vocab_size}"
    info = folder / TOKENIZER_INFO
    if (folder / "tokenizer.model").is_file() and info.is_file() and json.loads(info.read_text()) == identity:
        log(f"reusing the tokenizer {folder} (vocab {options.vocab_size}, {len(files)} train-split files)")
        return folder
    texts = [piece for _, path in files if (text := read_source(path)) for piece in chunk_text(text)]
    started = time.perf_counter()
    log(
        f"training a SentencePiece BPE tokenizer (vocab {options.vocab_size}) on the {len(files)} train-split "
        f"files of {src} ({sum(map(len, texts)) / 1e6:.1f} M characters)"
    )
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=folder))
    try:
        # SentencePiece writes the model file itself (by path): trained in a staging dir, then renamed.
        trained = train_sentencepiece(texts, staging / "tokenizer.model", options.vocab_size)
        os.replace(trained, folder / "tokenizer.model")
        write_json_atomic(info, identity)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"  trained in {time.perf_counter() - started:.1f} s: {folder / 'tokenizer.model'}")
    return folder


# ----------------------------------------------------------------------------- dataset, model, training


def prepare_data(options: PycodeOptions, src: Path, tokenizer_dir: Path, log: Log):
    """`wmtp data prepare pycode` into `data_dir` with the tokenizer's budget (reused when unchanged)."""
    from wmtp.data.pycode import prepare_pycode

    report = prepare_pycode(options.data_dir, src, tokenizer_dir, MAX_TOKENS, limit=options.limit)
    counts = ", ".join(f"{name} {split.kept}" for name, split in report.splits.items())
    log(f"{'reusing' if report.reused else 'prepared'} the pycode dataset {options.data_dir}: {counts} records")
    return report


def build_init_model(options: PycodeOptions, tokenizer_dir: Path, dest: Path, log: Log) -> Path:
    """The random-init trunk-heavy model as a standard model dir at `dest`."""
    from wmtp.model.checkpoint import save_model
    from wmtp.model.micro import trunk_heavy_mtp_args
    from wmtp.model.transformer import Transformer

    args = trunk_heavy_mtp_args(options.vocab_size, options.dim, options.trunk_layers, options.head_layers)
    model = Transformer(args)
    model.init_weights(options.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"initialising the model: {options.trunk_layers} trunk + {options.head_layers} head blocks, dim "
        f"{options.dim}, vocab {options.vocab_size}, {n_params / 1e6:.1f}M parameters (seed {options.seed})"
    )
    return save_model(
        model,
        dest,
        source=f"wmtp model pycode (random init, seed={options.seed})",
        tokenizer_model=tokenizer_dir / "tokenizer.model",
        tokenizer_source="SentencePiece BPE trained on the pycode train split's source files",
    )


def training_overrides(options: PycodeOptions, init_dir: Path) -> list[str]:
    """`--set` overrides of jobs/pycode.yaml: this build's model, data and step budget, then the user's."""
    data = Path(options.data_dir) / "processed"
    return [
        f"model.path={init_dir}",
        f"data.train={data / 'train.jsonl'}",
        f"data.valid={data / 'valid.jsonl'}",
        f"train.max_steps={options.steps}",
        *options.overrides,
    ]


def train_model(options: PycodeOptions, init_dir: Path, run_dir: Path, log: Log) -> dict:
    """Train jobs/pycode.yaml from `init_dir` in `run_dir` (the `wmtp train` loop, one process)."""
    from wmtp.distributed import destroy_distributed, init_distributed
    from wmtp.train.config import load_experiment
    from wmtp.train.loop import Preemption
    from wmtp.train.runner import run_experiment

    experiment = load_experiment(EXPERIMENT, training_overrides(options, init_dir))
    spec = experiment.stages[0]
    if spec.launch_world_size() != 1:
        raise WmtpError("wmtp model pycode trains in one process; expected distributed.strategy none")
    log(
        f"training {options.steps} steps of jobs/{EXPERIMENT}.yaml (batch {spec.train.batch_size}, max_length "
        f"{spec.data.max_length}, lr {spec.train.lr}) in {run_dir}"
    )
    Preemption.install()
    ctx = init_distributed(spec.distributed.backend, spec.train.device)
    started = time.perf_counter()
    try:
        results = run_experiment(experiment, run_dir, ctx)
    finally:
        destroy_distributed()
    seconds = time.perf_counter() - started
    result = results[-1]
    if result.preempted or result.final is None:
        raise WmtpError(f"training stopped before its final checkpoint (preempted at step {result.steps})")
    metrics = result.last_metrics
    tokens = metrics.get("tokens", 0.0)
    return {
        "steps": result.steps,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "final_train_loss": metrics.get("loss/total"),
        "batch_size": spec.train.batch_size,
        "max_length": spec.data.max_length,
        "lr": spec.train.lr,
        "device": str(ctx.device),
        "final_checkpoint": result.final,
        "stage_dir": result.stage_dir,
    }


# ----------------------------------------------------------------------------- evaluation


def head_losses(model, tokenizer, jsonl: Path, rows: int, max_length: int, batch_size: int = 8) -> dict:
    """Unweighted cross-entropy (nats/token) and top-1 accuracy of every head on the first `rows` rows of
    `jsonl`, over every response target (the training collator's labels: head k at t predicts t + k)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from wmtp.data.collate import MTPCollator
    from wmtp.data.dataset import JsonlSamples
    from wmtp.data.index import DatasetIndex
    from wmtp.model.mtp_loss import IGNORE_INDEX

    index = DatasetIndex.load(jsonl)
    n_rows, n_heads = min(rows, len(index)), model.n_future_tokens
    loader = DataLoader(
        JsonlSamples(jsonl, np.arange(n_rows), index),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=MTPCollator(tokenizer, n_heads, max_length),
    )
    device = next(model.parameters()).device
    ce_sum, correct, count = [0.0] * n_heads, [0] * n_heads, [0] * n_heads
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            trunk = model.forward_trunk(batch["input_ids"].to(device))
            for k in range(n_heads):
                logits = model.forward_head(trunk, k).float()
                labels = batch["labels"][:, :, k].to(device)
                valid = labels != IGNORE_INDEX
                ce_sum[k] += F.cross_entropy(
                    logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                ).item()
                correct[k] += int(((logits.argmax(-1) == labels) & valid).sum())
                count[k] += int(valid.sum())
    return {
        "rows": n_rows,
        "targets_per_head": count,
        "ce_per_head": [s / max(c, 1) for s, c in zip(ce_sum, count)],
        "top1_per_head": [r / max(c, 1) for r, c in zip(correct, count)],
    }


def held_out_prompts(test_jsonl: Path, n: int) -> list[str]:
    """Alpaca prompts (signature + docstring) of `n` test-split records spread evenly over the split's files."""
    import numpy as np

    from wmtp.data.dataset import JsonlSamples
    from wmtp.data.index import DatasetIndex
    from wmtp.data.template import format_prompt

    index = DatasetIndex.load(test_jsonl)
    rows = np.unique(np.linspace(0, len(index) - 1, min(n, len(index))).round().astype(np.int64))
    samples = JsonlSamples(test_jsonl, rows, index)
    return [format_prompt(samples[i]["instruction"], samples[i].get("input", "")) for i in range(len(samples))]


def decoding_stats(model, tokenizer, prompts: list[str], max_new_tokens: int) -> dict:
    """Greedy self-speculative decoding of `prompts` one at a time (batch 1): the generator's stats plus
    `tokens_per_forward` = generated tokens / (decoding forwards + one prefill per prompt); plain greedy
    decoding is 1.0 by this measure."""
    from wmtp.eval.generation import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, speculative=True, batch_size=1)
    _, stats = generate(model, tokenizer, prompts, config)
    out = stats.to_dict()
    out.update(
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
        tokens_per_forward=stats.n_tokens / max(stats.forward_passes + len(prompts), 1),
    )
    return out


def evaluate_model(
    model_dir: Path, options: PycodeOptions, max_length: int, prompts: list[str], log: Log, label: str
) -> dict:
    """Per-head validation loss and self-speculative decoding stats of one model dir (float32, CPU/GPU)."""
    import torch

    from wmtp.model import load_model, load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_dir, device=device, dtype="float32").eval(), load_tokenizer(model_dir)
    started = time.perf_counter()
    valid = head_losses(
        model, tokenizer, Path(options.data_dir) / "processed" / "valid.jsonl", options.valid_rows, max_length
    )
    decoding = decoding_stats(model, tokenizer, prompts, options.max_new_tokens)
    log(
        f"  {label}: validation CE per head {fmt(valid['ce_per_head'])}; acceptance "
        f"{decoding['acceptance_rate']:.3f}, {decoding['tokens_per_forward']:.2f} tokens/forward "
        f"({time.perf_counter() - started:.0f} s)"
    )
    return {"validation": valid, "decoding": decoding}


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


# ----------------------------------------------------------------------------- publishing


def publish_model(final_checkpoint: Path, stage_dir: Path, dest: Path, report: dict) -> Path:
    """The trained weights as a fresh standard model dir at `dest` (no optimizer or RNG state), with
    `report.json` and `training/` (spec.yaml, metrics.jsonl, plots/ of the run)."""
    from wmtp.common.files import write_json_atomic
    from wmtp.model import load_model
    from wmtp.model.checkpoint import save_model

    model = load_model(final_checkpoint, dtype="float32")
    steps = report["training"]["steps"]
    save_model(
        model,
        dest,
        source=f"wmtp model pycode (jobs/{EXPERIMENT}.yaml, {steps} steps)",
        tokenizer_model=final_checkpoint / "tokenizer" / "tokenizer.model",
        tokenizer_source="SentencePiece BPE trained on the pycode train split's source files",
        train_step=steps,
    )
    (dest / "training").mkdir()
    for name in ("spec.yaml", "metrics.jsonl"):
        if (stage_dir / name).is_file():
            shutil.copyfile(stage_dir / name, dest / "training" / name)
    if (stage_dir / "plots").is_dir():
        shutil.copytree(stage_dir / "plots", dest / "training" / "plots")
    write_json_atomic(dest / REPORT_FILE, report)
    return dest


def existing_build(options: PycodeOptions) -> Optional[dict]:
    """The report of a complete `out` (it has report.json), or None when there is none."""
    report_file = Path(options.out) / REPORT_FILE
    if not Path(options.out).exists():
        return None
    if not report_file.is_file():
        raise WmtpError(
            f"{options.out}: exists but is not a `wmtp model pycode` build (no {REPORT_FILE}); "
            "choose another --out or pass --force to replace it"
        )
    return json.loads(report_file.read_text())


# ----------------------------------------------------------------------------- the command


def build_pycode_model(options: PycodeOptions, force: bool = False, log: Log = print) -> BuildResult:
    """Tokenizer → dataset → random init → training → report → `options.out` (see the module doc)."""
    import torch

    from wmtp.data.pycode import default_src

    out = Path(options.out)
    if not force and (previous := existing_build(options)) is not None:
        if previous.get("options") != options.identity():
            raise WmtpError(
                f"{out}: already built with other options (see its {REPORT_FILE}); pass --force "
                "to rebuild it or choose another --out"
            )
        return BuildResult(
            out,
            previous,
            reused=True,
            notes=[f"reused {out}: built with the same options ({REPORT_FILE}; --force rebuilds)"],
        )
    src = Path(options.src) if options.src is not None else default_src()
    threads = torch.get_num_threads()
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    try:
        return build_in_staging(options, src, log)
    finally:
        torch.set_num_threads(threads)


def build_in_staging(options: PycodeOptions, src: Path, log: Log) -> BuildResult:
    """The build proper, once reuse was ruled out: everything in a staging dir beside `out`, then renamed."""
    import wmtp.eval.generation  # noqa: F401 — now: the report's decoding must not fail to import after training
    from wmtp.common.files import replace_dir

    out = Path(options.out)
    started = time.perf_counter()
    tokenizer_dir = build_tokenizer(options, src, log)
    data = prepare_data(options, src, tokenizer_dir, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.build.", dir=out.parent))
    try:
        init_dir = build_init_model(options, tokenizer_dir, staging / "init", log)
        training = train_model(options, init_dir, staging / "run", log)
        log(
            f"  {training['steps']} steps in {training['seconds']:.0f} s ({training['tokens_per_s']:.0f} tokens/s), "
            f"final train loss {training['final_train_loss']:.3f}"
        )
        prompts = held_out_prompts(Path(options.data_dir) / "processed" / "test.jsonl", options.prompts)
        log(
            f"evaluating: {options.valid_rows} valid rows, {len(prompts)} test prompts (≤ {options.max_new_tokens} "
            "new tokens, greedy self-speculative, batch 1)"
        )
        max_length = training["max_length"]
        evaluation = {
            "random_init": evaluate_model(init_dir, options, max_length, prompts, log, "random init"),
            "trained": evaluate_model(training["final_checkpoint"], options, max_length, prompts, log, "trained"),
        }
        report = make_report(options, data, training, evaluation, time.perf_counter() - started)
        built = publish_model(training["final_checkpoint"], training["stage_dir"], staging / "model", report)
        replace_dir(built, out)  # an existing `out` is moved aside first, restored if the rename fails
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out, report)


def make_report(options: PycodeOptions, data, training: dict, evaluation: dict, seconds: float) -> dict:
    """report.json: the options, the model, the data, the training run and both evaluations."""
    from wmtp.model.micro import trunk_heavy_mtp_args

    args = trunk_heavy_mtp_args(options.vocab_size, options.dim, options.trunk_layers, options.head_layers)
    shown = {k: v for k, v in training.items() if k not in ("final_checkpoint", "stage_dir")}
    return {
        "options": options.identity(),
        "model": {"trunk_layers": args.n_trunk_layers, "head_layers": args.n_future_tokens, **args.to_params()},
        "data": {name: split.kept for name, split in data.splits.items()},
        "training": shown,
        "evaluation": evaluation,
        "build_seconds": seconds,
    }


def summary_lines(result: BuildResult) -> list[str]:
    """The printed summary of a build (or of a reused one)."""
    r = result.report
    m, t, ev = r["model"], r["training"], r["evaluation"]
    heads = m["head_layers"]
    lines = [
        f"{result.out}: {m['trunk_layers']} trunk + {heads} head blocks, dim {m['dim']}, vocab "
        f"{m['vocab_size']}; data {', '.join(f'{k} {v}' for k, v in r['data'].items())} records",
        f"training: {t['steps']} steps × batch {t['batch_size']} (max_length {t['max_length']}) on {t['device']} "
        f"in {t['seconds']:.0f} s, {t['tokens']:,.0f} tokens ({t['tokens_per_s']:.0f} tokens/s), final train "
        f"loss {t['final_train_loss']:.3f}; whole build {r['build_seconds']:.0f} s",
    ]
    valid = ev["trained"]["validation"]
    lines.append(f"validation on {valid['rows']} valid rows ({valid['targets_per_head'][0]:,} targets per head):")
    lines.append(" " * 22 + "".join(f"{f'head {k + 1}':>9}" for k in range(heads)))
    for label, key in (("random init", "random_init"), ("trained", "trained")):
        v = ev[key]["validation"]
        lines.append(f"  {'CE ' + label:<20}" + "".join(f"{x:9.3f}" for x in v["ce_per_head"]))
    for label, key in (("random init", "random_init"), ("trained", "trained")):
        v = ev[key]["validation"]
        lines.append(f"  {'top-1 ' + label:<20}" + "".join(f"{x:9.3f}" for x in v["top1_per_head"]))
    d = ev["trained"]["decoding"]
    lines.append(
        f"self-speculative greedy decoding, {d['prompts']} held-out test prompts, ≤ {d['max_new_tokens']} "
        "new tokens, batch 1:"
    )
    for label, key in (("random init", "random_init"), ("trained", "trained")):
        d = ev[key]["decoding"]
        lines.append(
            f"  {label:<12} acceptance {d['acceptance_rate']:.3f} ({d['accepted']}/{d['drafted']} drafts), "
            f"{d['tokens_per_forward']:.2f} tokens/forward, {d['n_tokens']} tokens in {d['seconds']:.1f} s"
        )
    return lines
