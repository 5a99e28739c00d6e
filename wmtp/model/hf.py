"""Hugging Face Llama directories, both ways (extra `hf`).

`export_hf(model_dir, out)` writes the next-token path of an MTP model — trunk blocks, head 1
(`layers[-1]`), shared `norm` and `output` — as a transformers `LlamaForCausalLM` directory:
`config.json`, `generation_config.json`, `model.safetensors` and, when the model dir has a tokenizer,
`tokenizer.json` + `tokenizer_config.json` that `AutoTokenizer.from_pretrained(out)` loads and that
encode exactly as our `Tokenizer.encode(text, bos=True)`.

`import_hf(hf_dir, out, n_future_tokens)` is the converse: trunk = the Llama's first L−1 blocks, head 1
= its last block, heads 2..n = copies of the last block (how the MTP paper adds heads to a pretrained
next-token model), shared norm and output; the SentencePiece tokenizer.model is carried over.

RoPE layout: our blocks rotate adjacent pairs (x[2i], x[2i+1]) (Meta's complex convention), HF Llama
rotates halves (x[i], x[i + head_dim/2]). The two are the same attention once the rows of wq / wk are
permuted within each head, exactly as transformers' `convert_llama_weights_to_hf.py` does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from wmtp.common.files import atomic_dir
from wmtp.errors import CheckpointError, WmtpError
from wmtp.model.args import read_json_object

HF_EXTRA = "exporting to Hugging Face needs the `hf` extra (pip install 'weighted-mtp[hf]')"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
# Our block names → HF Llama's, per layer (q/k additionally get the RoPE row permutation).
BLOCK_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOP_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from adjacent-pair RoPE order (ours, Meta's) to rotate-half order (HF)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_halves`."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


# ---------------------------------------------------------------- export


def export_hf(model_dir: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the next-token path of `model_dir` as a LlamaForCausalLM dir at `out` (new; atomic).

    Returns a summary: layers written, heads dropped, whether a tokenizer was written.
    """
    try:
        from transformers import LlamaConfig
    except ImportError:
        raise WmtpError(HF_EXTRA) from None
    from wmtp.model.checkpoint import load_model
    from wmtp.model.tokenizer import load_tokenizer

    model_dir, out = Path(model_dir), Path(out)
    if out.exists():
        raise CheckpointError(f"{out}: already exists; choose a new destination")
    model = load_model(model_dir)
    args = model.args
    try:
        tokenizer = load_tokenizer(model_dir)
    except CheckpointError:  # a model dir may ship no tokenizer: export the weights alone
        tokenizer = None
    state = model.state_dict()
    n_blocks = args.n_trunk_layers + 1  # trunk + head 1: `layers` holds exactly these, in order
    hf_state = {hf: state[ours] for ours, hf in TOP_KEYS.items()}
    for i in range(n_blocks):
        for ours, hf in BLOCK_KEYS.items():
            w = state[f"layers.{i}.{ours}"]
            if ours == "attention.wq.weight":
                w = interleaved_to_halves(w, args.n_heads)
            elif ours == "attention.wk.weight":
                w = interleaved_to_halves(w, args.n_kv_heads)
            hf_state[f"model.layers.{i}.{hf}"] = w
    dtype = next(iter(hf_state.values())).dtype
    bos = eos = pad = None
    if tokenizer is not None:
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        pad = tokenizer.sp.pad_id() if tokenizer.sp.pad_id() >= 0 else None
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim,
        num_hidden_layers=n_blocks,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        hidden_act="silu",
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        dtype=str(dtype).removeprefix("torch."),
    )
    config.architectures = ["LlamaForCausalLM"]
    with atomic_dir(out) as tmp:
        from safetensors.torch import save_file

        config.save_pretrained(tmp)
        (tmp / "generation_config.json").write_text(
            json.dumps({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}, indent=2) + "\n"
        )
        save_file(
            {k: v.detach().contiguous() for k, v in hf_state.items()}, tmp / HF_WEIGHTS, metadata={"format": "pt"}
        )
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp)
    return {
        "layers": n_blocks,
        "trunk": args.n_trunk_layers,
        "dropped_heads": args.n_future_tokens - 1,
        "tokenizer": tokenizer is not None,
        "dtype": str(dtype).removeprefix("torch."),
    }


def write_hf_tokenizer(tokenizer, dest: Path) -> None:
    """`tokenizer.json` + `tokenizer_config.json` encoding like our SentencePiece `encode(text, bos=True)`.

    Written by hand rather than by `LlamaTokenizer`: in transformers 5 that class rebuilds its pipeline
    with a Metaspace pre-tokenizer that does not prepend "▁" to a text already starting with a space
    (SentencePiece's dummy prefix always does), so indented code encodes differently. Here the
    normalizer prepends "▁" and maps spaces to "▁" (as SentencePiece normalises), BPE merges are ranked
    by the merged piece's score (SentencePiece's BPE merges the best-scoring piece first), and
    `tokenizer_class: TokenizersBackend` makes transformers load this file as is. `split_special_tokens`
    because SentencePiece encodes a literal "<s>" in text as text, not as the control token.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    sp = tokenizer.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    specials = [i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    ranked = []
    for piece, i in vocab.items():
        if i in specials or sp.is_byte(i):
            continue  # control, unknown and byte pieces are never the result of a merge
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-sp.get_score(i), i, cut, left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    unk = sp.id_to_piece(sp.unk_id())
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bos, eos = sp.id_to_piece(tokenizer.bos_id), sp.id_to_piece(tokenizer.eos_id)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)]
    )
    backend.add_special_tokens([AddedToken(sp.id_to_piece(i), normalized=False, special=True) for i in specials])
    backend.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
    }
    if sp.pad_id() >= 0:
        config["pad_token"] = sp.id_to_piece(sp.pad_id())
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(tokenizer.path, dest / "tokenizer.model")  # so `import-hf` can carry it back


# ---------------------------------------------------------------- import


def read_hf_config(hf_dir: Path) -> dict:
    """config.json of a Llama dir, validated: anything we do not implement is one error naming the field."""
    path = hf_dir / "config.json"
    config = read_json_object(path, missing="not found (a Hugging Face model dir needs config.json)")

    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field}={config.get(field)!r} {why}")

    if config.get("model_type") != "llama":
        raise bad("model_type", "is not 'llama'; only Llama checkpoints can be imported")
    if config.get("tie_word_embeddings", False):  # absent = LlamaConfig's default, untied
        raise bad("tie_word_embeddings", "ties the output to the embedding; our model has a separate output")
    if config.get("rope_scaling"):
        raise bad("rope_scaling", "is not implemented by our RoPE (plain rope_theta only)")
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise bad("rope_parameters", "is not implemented by our RoPE (rope_type 'default' only)")
    if config.get("hidden_act", "silu") != "silu":
        raise bad("hidden_act", "is not SwiGLU's 'silu'")
    for field in ("attention_bias", "mlp_bias"):
        if config.get(field):
            raise bad(field, "adds biases our blocks do not have")
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(config.get(field), int) or config[field] < 1:
            raise bad(field, "must be a positive integer")
    heads = config["num_attention_heads"]
    if config.get("head_dim") not in (None, config["hidden_size"] // heads):
        raise bad("head_dim", f"differs from hidden_size / num_attention_heads = {config['hidden_size'] // heads}")
    return config


def ffn_params(dim: int, intermediate: int) -> tuple[int, Optional[float]]:
    """(multiple_of, ffn_dim_multiplier) for which `ModelArgs.ffn_hidden_dim` is exactly `intermediate`."""
    from wmtp.model.args import ModelArgs

    # A round multiple_of when one reproduces it (Meta's own checkpoints), else the size itself with a
    # multiplier that lands in (0, intermediate]: rounding up to a multiple of `intermediate` gives it.
    for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if ModelArgs(dim=dim, n_heads=1, multiple_of=multiple_of).ffn_hidden_dim == intermediate:
            return multiple_of, None
    return intermediate, intermediate / int(2 * (4 * dim) / 3)


def read_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards `model.safetensors.index.json` names."""
    from wmtp.model.checkpoint import read_safetensors

    if (hf_dir / HF_WEIGHTS).is_file():
        return read_safetensors(hf_dir / HF_WEIGHTS)
    if (hf_dir / HF_INDEX).is_file():
        try:
            shards = sorted(set(json.loads((hf_dir / HF_INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{hf_dir / HF_INDEX}: not a safetensors index ({exc})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_safetensors(hf_dir / shard))
        return state
    raise CheckpointError(f"{hf_dir}: no {HF_WEIGHTS} or {HF_INDEX} (only safetensors weights are imported)")


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, n_future_tokens: int = 4) -> dict:
    """Write an MTP standard model dir from a Llama dir: heads 2..n start as copies of the last block."""
    from wmtp.model.args import ModelArgs
    from wmtp.model.checkpoint import write_model_dir

    hf_dir, out = Path(hf_dir), Path(out)
    if not hf_dir.is_dir():
        raise CheckpointError(f"{hf_dir}: Hugging Face model directory not found")
    if out.exists():
        raise CheckpointError(f"{out}: already exists; choose a new destination")
    if n_future_tokens < 1:
        raise CheckpointError(f"--n-future-tokens must be at least 1, got {n_future_tokens}")
    config = read_hf_config(hf_dir)
    n_blocks, dim = config["num_hidden_layers"], config["hidden_size"]
    multiple_of, multiplier = ffn_params(dim, config["intermediate_size"])
    rope = config.get("rope_parameters") or {}
    args = ModelArgs(
        dim=dim,
        n_layers=n_blocks - 1 + n_future_tokens,
        n_heads=config["num_attention_heads"],
        n_kv_heads=config.get("num_key_value_heads"),
        vocab_size=config["vocab_size"],
        multiple_of=multiple_of,
        ffn_dim_multiplier=multiplier,
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        n_future_tokens=n_future_tokens,
        max_seq_len=int(config.get("max_position_embeddings", 2048)),
    )
    if args.ffn_hidden_dim != config["intermediate_size"]:
        raise CheckpointError(
            f"{hf_dir / 'config.json'}: intermediate_size={config['intermediate_size']} "
            "cannot be expressed by multiple_of / ffn_dim_multiplier"
        )
    hf_state = read_hf_state(hf_dir)
    state: dict[str, torch.Tensor] = {}
    wanted = {hf: ours for ours, hf in TOP_KEYS.items()}
    for i in range(n_blocks):
        for ours, hf in BLOCK_KEYS.items():
            wanted[f"model.layers.{i}.{hf}"] = f"layers.{i}.{ours}"
    missing = sorted(set(wanted) - set(hf_state))
    if missing:
        raise CheckpointError(
            f"{hf_dir}: weights lack {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    for hf, ours in wanted.items():
        w = hf_state[hf]
        if ours.endswith("attention.wq.weight"):
            w = halves_to_interleaved(w, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = halves_to_interleaved(w, args.n_kv_heads)
        state[ours] = w
    last = n_blocks - 1  # the Llama's last block is our head 1 (`layers[-1]`); the extra heads copy it
    for head in range(n_future_tokens - 1):
        for ours in BLOCK_KEYS:
            state[f"extra_heads.{head}.{ours}"] = state[f"layers.{last}.{ours}"].clone()
    tokenizer_model = hf_dir / "tokenizer.model"
    tokenizer_model = tokenizer_model if tokenizer_model.is_file() else None
    write_model_dir(
        out,
        args,
        state,
        source=f"hf:{hf_dir.resolve()}",
        tokenizer_model=tokenizer_model,
        extra_metadata={"hf_import": {"copied_heads_from_block": last, "n_future_tokens": n_future_tokens}},
    )
    return {"trunk": args.n_trunk_layers, "heads": n_future_tokens, "tokenizer": tokenizer_model is not None}
