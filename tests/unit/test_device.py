"""Device selection (`train.device: auto | cuda | mps | cpu`) with CUDA / MPS availability mocked, down to
the dtype and autocast decisions, the process group, evaluation's device, and the model / decoding code
paths that branch on the device (MPS: RoPE in real arithmetic)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import wmtp
from wmtp import device as wd
from wmtp.device import DeviceError, precision, resolve_device
from wmtp.distributed import init_distributed
from wmtp.eval.decoding import CachedMTP
from wmtp.eval.runner import pick_device
from wmtp.model import ModelArgs, Transformer, transformer
from wmtp.train.config import SpecError, load_experiment
from wmtp.train.loop import model_dtype


@pytest.fixture
def machine(monkeypatch):
    """`machine(cuda=…, mps=…)`: what this process sees as available."""

    def set_available(cuda: bool = False, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(wd, "mps_available", lambda: mps)

    return set_available


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == "cpu"  # always there


def test_an_explicit_device_the_machine_lacks_is_one_clear_error(machine):
    machine(cuda=False, mps=False)
    with pytest.raises(DeviceError, match=r"^train\.device: mps is not available on this machine \(available: cpu\)"):
        resolve_device("mps")
    machine(cuda=False, mps=True)
    with pytest.raises(DeviceError, match=r"train\.device: cuda is not available .*available: mps, cpu"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    "dtype, device, weights, autocast, scaling",
    [
        ("auto", "cuda", torch.float32, torch.bfloat16, False),
        ("auto", "mps", torch.float32, None, False),  # no bf16 autocast on MPS
        ("auto", "cpu", torch.float32, None, False),
        ("float32", "mps", torch.float32, None, False),
        ("float16", "mps", torch.float32, torch.float16, True),  # fp32 master weights, fp16 math, loss scaling
        ("float16", "cuda", torch.float32, torch.float16, True),
        ("bfloat16", "cuda", torch.bfloat16, None, False),
        ("bfloat16", "cpu", torch.bfloat16, None, False),
    ],
)
def test_precision_per_dtype_and_device(dtype, device, weights, autocast, scaling):
    assert precision(dtype, device) == wd.Precision(weights, autocast, scaling)


def test_bfloat16_on_mps_is_refused_naming_the_key():
    with pytest.raises(DeviceError, match=r"^model\.dtype: bfloat16 is not supported on mps"):
        precision("bfloat16", "mps")


def test_the_trainer_weights_follow_the_device():
    spec = load_experiment("smoke", ["model.dtype=auto"]).stages[0]
    assert model_dtype(spec, torch.device("mps")) == torch.float32
    bf16 = load_experiment("smoke", ["model.dtype=bfloat16"]).stages[0]
    assert model_dtype(bf16, torch.device("cuda", 0)) == torch.bfloat16
    with pytest.raises(DeviceError, match="model.dtype"):
        model_dtype(bf16, torch.device("mps"))


def test_one_process_on_mps_makes_no_process_group(machine, monkeypatch):
    machine(cuda=False, mps=True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(dist, "init_process_group", lambda **_: pytest.fail("no process group for one process"))
    ctx = init_distributed("auto", "auto")
    assert ctx.device == torch.device("mps") and not ctx.is_distributed
    assert init_distributed("auto", "cpu").device == torch.device("cpu")  # an explicit choice wins over auto


def test_several_processes_on_mps_are_refused_before_any_collective(machine, monkeypatch):
    machine(cuda=False, mps=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "init_process_group", lambda **_: pytest.fail("must refuse before joining"))
    with pytest.raises(DeviceError, match=r"train\.device: mps runs one process, not 2"):
        init_distributed("auto", "mps")


def test_evaluation_follows_the_same_selection(machine):
    machine(cuda=False, mps=True)
    assert pick_device(None, None) == ("mps", "float32")
    assert pick_device("auto", None) == ("mps", "float32")
    assert pick_device("cpu", None) == ("cpu", "float32")
    machine(cuda=True, mps=True)
    assert pick_device(None, None) == ("cuda", "bfloat16")
    assert pick_device("cuda:1", "float32") == ("cuda:1", "float32")  # an indexed device is taken as given


def test_the_mps_fallback_variable_is_set_on_macos_only_and_never_overrides():
    env = {}
    wmtp.enable_mps_fallback("linux", env)
    assert env == {}
    wmtp.enable_mps_fallback("darwin", env)
    assert env == {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}
    env = {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}
    wmtp.enable_mps_fallback("darwin", env)
    assert env == {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}


# ---------------------------------------------------------------- code paths that branch on the device


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(
        ModelArgs(
            dim=64,
            n_layers=5,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=97,
            multiple_of=16,
            n_future_tokens=3,
            max_seq_len=64,
        )
    )
    model.init_weights(0)
    return model.eval()


def complex_rope(x_BSND, cos_SD, sin_SD):
    """Meta's RoPE as written in its release: adjacent pairs as complex numbers times cos + i·sin."""
    x_complex = torch.view_as_complex(x_BSND.float().unflatten(-1, (-1, 2)))
    rotation = torch.complex(cos_SD.float(), sin_SD.float())[None, :, None, :]
    return torch.view_as_real(x_complex * rotation).flatten(-2).type_as(x_BSND)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_models_real_rope_is_bit_identical_to_the_complex_product(dtype):
    """One RoPE path for every device (MPS has no complex kernels, inductor no complex codegen): the
    complex product's own multiplies and adds, so not just close but equal."""
    cos, sin = transformer.rope_tables(32, 64, 10000.0)
    x = torch.randn(3, 40, 4, 32, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert torch.equal(transformer.apply_rope(x, cos[5:45], sin[5:45]), complex_rope(x, cos[5:45], sin[5:45]))


def test_the_models_logits_equal_those_with_complex_rope(monkeypatch):
    model, tokens = tiny_model(), torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        got = model(tokens)
        monkeypatch.setattr(transformer, "apply_rope", complex_rope)
        expected = model(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_decoding_runs_the_models_own_rope(monkeypatch):
    """Decoding has no RoPE (or attention) of its own: the cached steps call the model's `apply_rope`, rows
    at different positions included, so whatever form it takes on a device, decoding takes too."""
    model, tokens = tiny_model(), torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        expected = model(tokens)
    calls = []
    monkeypatch.setattr(transformer, "apply_rope", lambda *a: calls.append(1) or complex_rope(*a))
    cached = CachedMTP(model, 2, 16, n_heads=3)
    prompts = torch.cat([tokens[:, :9], torch.zeros(2, 1, dtype=torch.long)], dim=1)
    prompts[0, 8] = 0  # right-padded: row 0's prompt is 8 tokens, row 1's 9
    prompt = cached.step(prompts, [0, 0], 3).full()
    ragged = cached.step(torch.stack([tokens[0, 8:10], tokens[1, 9:11]]), [8, 9], 3).full()  # rows at 8.., 9..
    assert calls, "decoding did not call the model's apply_rope"
    torch.testing.assert_close(prompt[0, :8], expected[0, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prompt[1, :9], expected[1, :9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ragged[0], expected[0, 8:10], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ragged[1], expected[1, 9:11], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the spec keys


def test_train_device_is_a_checked_spec_key():
    assert load_experiment("smoke").stages[0].train.device == "auto"
    assert load_experiment("smoke", ["train.device=mps"]).stages[0].train.device == "mps"
    with pytest.raises(SpecError, match=r"train\.device: Input should be 'auto', 'cuda', 'mps' or 'cpu' \(got 'gpu'\)"):
        load_experiment("smoke", ["train.device=gpu"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["train.device=mps", "distributed.strategy=ddp", "distributed.nproc_per_node=2"],
            r"from --set distributed\.nproc_per_node=2: train\.device: mps runs one process; .*\(got mps\)",
        ),
        (
            ["train.device=mps", "model.dtype=bfloat16"],
            r"model\.dtype: bfloat16 is not supported on mps \(train\.device\); .*\(got bfloat16\)",
        ),
        (
            ["model.dtype=float16", "distributed.strategy=fsdp", "distributed.nproc_per_node=2"],
            r"model\.dtype: float16 \(loss scaling\) does not run under distributed\.strategy fsdp.*\(got float16\)",
        ),
    ],
)
def test_what_an_explicit_device_cannot_run_is_refused_when_the_spec_loads(overrides, message):
    with pytest.raises(SpecError, match=message):
        load_experiment("smoke", overrides)
    # the same keys with what they can run load
    assert load_experiment("smoke", ["train.device=mps", "model.dtype=float16"]).stages


def test_the_device_may_change_when_a_run_dir_resumes():
    from wmtp.train.resume import spec_differences

    gpu, laptop = (load_experiment("smoke", [f"train.device={d}"]).stages[0].to_dict() for d in ("cuda", "mps"))
    assert spec_differences(gpu, laptop) == []
    other = load_experiment("smoke", ["train.device=mps", "data.split_variant=small"]).stages[0].to_dict()
    assert [key for key, _, _ in spec_differences(gpu, other)] == ["data.split_variant"]  # the data may not


def test_wmtp_train_resolves_every_stages_device_and_dtype_before_starting(machine):
    from wmtp_cli.train import check_devices

    machine(cuda=False, mps=False)
    with pytest.raises(DeviceError, match=r"^train\.device: mps is not available on this machine"):
        check_devices(load_experiment("verifiable", ["train.device=mps"], preset="micro"))
    machine(cuda=False, mps=True)  # auto → mps: bfloat16 weights cannot run there
    with pytest.raises(DeviceError, match=r"^model\.dtype: bfloat16 is not supported on mps"):
        check_devices(load_experiment("verifiable", ["model.dtype=bfloat16"], preset="micro"))
    check_devices(load_experiment("verifiable", ["model.dtype=float16"], preset="micro"))
