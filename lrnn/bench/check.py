"""Fast path vs sequential reference on any device: ``lrnn bench check --device cuda``.

The unit tests run on the CPU. This command repeats their core checks where the tests cannot go (a GPU,
another thread count, a compiled model): for every op and option it compares ``mode="chunk"`` with
``mode="recurrent"`` (outputs, final states and the gradients of every input, the initial state included),
in float64 against the tight bound and float32 against the loose one, at odd lengths; then for every mixer
and both eigenvalue ranges it compares a full forward with prefill + token-by-token decode, and runs a
``torch.compile(fullgraph=True)`` model forward and decode step against eager. It prints one line per
check and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lrnn.ops import decay_from_values, decay_recurrence, delta_rule, short_conv
from lrnn.testing import relative_error

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device to check (default cpu)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[1, 63, 65, 500],
                        help="sequence lengths of the op checks (default 1 63 65 500)")
    parser.add_argument("--long-length", type=int, default=1024,
                        help="length of the float32 op checks (default 1024)")
    parser.add_argument("--skip-models", action="store_true", help="only check the ops")
    parser.add_argument("--skip-compile", action="store_true", help="do not check torch.compile")


def _inputs(op: str, t: int, dtype: torch.dtype, device: torch.device, seed: int, **opts) -> dict:
    """Seeded random inputs of one op call (drawn in float64 on the CPU, then cast and moved)."""
    g = torch.Generator().manual_seed(seed)
    b, h, dk, dv = 2, 3, 16, 24

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def signed(*shape):
        log_a, neg = decay_from_values(2 * torch.rand(*shape, generator=g, dtype=torch.float64) - 1)
        return log_a, neg

    if op == "short_conv":
        args = {"x": rand(b, t, 40), "weight": rand(40, 4), "bias": rand(40), "initial_state": rand(b, 3, 40)}
    elif op == "decay_recurrence":
        shape = (b, t, h, dk) if opts["per_channel"] else (b, t, h)
        log_a, neg = signed(*shape)
        args = {"q": rand(b, t, h, dk), "k": rand(b, t, h, dk), "v": rand(b, t, h, dv), "log_decay": log_a,
                "decay_negative": neg, "initial_state": rand(b, h, dk, dv)}
    else:
        n = opts["num_householder"]
        args = {"q": F.normalize(rand(b, t, h, dk), dim=-1), "k": F.normalize(rand(b, t * n, h, dk), dim=-1),
                "v": rand(b, t * n, h, dv), "beta": 2 * torch.rand(b, t * n, h, generator=g, dtype=torch.float64),
                "initial_state": rand(b, h, dk, dv)}
        if opts["gated"]:
            args["log_decay"], args["decay_negative"] = signed(b, t, h)
    return {name: (x.to(device) if x.dtype == torch.bool else x.to(device, dtype)) for name, x in args.items()}


def _run(op: str, args: dict, mode: str, opts: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs (o, final state) and the gradients of every floating input under a fixed random cotangent."""
    leaves = {n: (x.detach().requires_grad_(True) if x.is_floating_point() else x) for n, x in args.items()}
    if op == "short_conv":
        o, s = short_conv(leaves["x"], leaves["weight"], leaves["bias"], activation="silu",
                          initial_state=leaves["initial_state"], output_final_state=True, mode=mode)
    elif op == "decay_recurrence":
        o, s = decay_recurrence(**leaves, output_final_state=True, mode=mode, chunk_size=opts["chunk_size"])
    else:
        o, s = delta_rule(**leaves, num_householder=opts["num_householder"], output_final_state=True, mode=mode,
                          chunk_size=opts["chunk_size"])
    g = torch.Generator().manual_seed(1)
    cot_o = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device, o.dtype)
    cot_s = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device, s.dtype)
    floats = [x for x in leaves.values() if x.is_floating_point()]
    grads = torch.autograd.grad((o * cot_o).sum() + (s * cot_s).sum(), floats)
    return [o.detach(), s.detach()], list(grads)


def _op_cases(lengths: list[int], long_length: int) -> list[tuple[str, dict, int, torch.dtype]]:
    cases = []
    for t in lengths:
        cases.append(("short_conv", {}, t, torch.float64))
        for per_channel in (False, True):
            cases.append(("decay_recurrence", {"per_channel": per_channel, "chunk_size": 32}, t, torch.float64))
        for gated in (False, True):
            for n in (1, 2, 3):
                cases.append(("delta_rule", {"gated": gated, "num_householder": n, "chunk_size": 32}, t,
                              torch.float64))
    cases.append(("decay_recurrence", {"per_channel": False, "chunk_size": 64}, long_length, torch.float32))
    cases.append(("decay_recurrence", {"per_channel": True, "chunk_size": 64}, long_length, torch.float32))
    cases.append(("delta_rule", {"gated": True, "num_householder": 1, "chunk_size": 64}, long_length, torch.float32))
    cases.append(("delta_rule", {"gated": False, "num_householder": 2, "chunk_size": 64}, long_length, torch.float32))
    return cases


def check_ops(device: torch.device, lengths: list[int], long_length: int, report: Callable[[str, float, float], None]):
    for op, opts, t, dtype in _op_cases(lengths, long_length):
        args = _inputs(op, t, dtype, device, seed=t, **opts)
        (outs_c, grads_c), (outs_r, grads_r) = _run(op, args, "chunk", opts), _run(op, args, "recurrent", opts)
        err = max(relative_error(a, b) for a, b in zip(outs_c + grads_c, outs_r + grads_r))
        label = ", ".join(f"{k}={v}" for k, v in opts.items())
        report(f"{op}({label}) T={t} {str(dtype).removeprefix('torch.')}: chunk vs recurrent, outputs+grads",
               err, TOLERANCE[dtype])


def check_models(device: torch.device, compile_too: bool, report: Callable[[str, float, float], None]) -> None:
    from lrnn.layers import MIXERS
    from lrnn.models import LanguageModel, ModelConfig

    tiny = {name: dict(spec.small) for name, spec in MIXERS.items()}  # every registered mixer, small
    ids = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(0)).to(device)
    for name in sorted(MIXERS):
        for negative in ((False, True) if MIXERS[name].eigenvalue_switch else (False,)):
            torch.manual_seed(0)
            config = ModelConfig(vocab_size=40, d_model=16, n_layers=2, mixer=name, d_intermediate=32,
                                 negative_eigenvalues=negative, mixer_kwargs=tiny)
            model = LanguageModel(config).to(device, torch.float64).eval()
            with torch.no_grad():
                full = model(ids)
                cache = model.new_cache()
                steps = [model(ids[:, :13], cache=cache)]
                steps += [model(ids[:, i:i + 1], cache=cache) for i in range(13, ids.shape[1])]
            report(f"model[{name}, negative_eigenvalues={negative}] float64: full == prefill + decode",
                   relative_error(torch.cat(steps, dim=1), full), TOLERANCE[torch.float64])
    if compile_too:
        torch.manual_seed(0)
        config = ModelConfig(vocab_size=40, d_model=16, n_layers=2, mixer=["gated_deltanet", "mamba2"],
                             d_intermediate=32, negative_eigenvalues=True, mixer_kwargs=tiny)
        model = LanguageModel(config).to(device).eval()
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        with torch.no_grad():
            eager_cache, compiled_cache = model.new_cache(), model.new_cache()
            full_e, full_c = model(ids, cache=eager_cache), compiled(ids, cache=compiled_cache)
            step = ids[:, :1]
            step_e, step_c = model(step, cache=eager_cache), compiled(step, cache=compiled_cache)
        report("torch.compile(fullgraph=True) float32: forward vs eager", relative_error(full_c, full_e), 1e-4)
        report("torch.compile(fullgraph=True) float32: decode step vs eager", relative_error(step_c, step_e), 1e-4)


def run_from_args(args: argparse.Namespace, command: str, parser: argparse.ArgumentParser) -> int:
    device = torch.device(args.device)
    if any(t < 1 for t in args.lengths) or args.long_length < 1:
        parser.error(f"lengths must be >= 1, got --lengths {args.lengths} --long-length {args.long_length}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {command}\n# device {device} ({name}), torch {torch.__version__}\n")
    failures = []

    def report(what: str, err: float, tol: float) -> None:
        ok = err <= tol
        print(f"{'ok  ' if ok else 'FAIL'} {what}: rel. error {err:.2e} (bound {tol:.0e})", flush=True)
        if not ok:
            failures.append(what)

    start = time.perf_counter()
    check_ops(device, args.lengths, args.long_length, report)
    if not args.skip_models:
        check_models(device, not args.skip_compile, report)
    print(f"\n{len(failures)} failed in {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0
