"""DiT speed on this machine: forward and training-step time, compile time, and achieved
FLOP/s against the measured float32 matmul peak, for the video presets.

Achieved FLOP/s uses the analytic count (`dit.gflops`, multiply-accumulates x 2; a
training step ~ 3 forward passes) and, for the forward pass, XLA's own cost analysis.

    python benchmarks/bench_dit.py [--presets tiny small] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from _report import report
from sora_mini import dit
from sora_mini.patchify import patch_grid
from sora_mini.loop import matmul_gflops

# (batch, latent (t, h, w, c), text tokens) per preset: the tiny VAE's 17x32x32 clips and
# the small VAE's 17x64x64 clips.
WORKLOADS = {"tiny": (8, (9, 8, 8, 8), 72), "small": (4, (5, 8, 8, 16), 72)}


def timed(fn, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t0) / repeats


def bench(name: str, repeats: int, dtype: str | None) -> dict:
    config = dit.DIT_PRESETS[name]
    if dtype:
        config = config.replace(dtype=dtype)
    B, latent, L = WORKLOADS[name]
    model = dit.DiT(config, rngs=nnx.Rngs(0))
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (B, *latent))
    t = jax.random.uniform(k[1], (B,))
    text = jax.random.normal(k[2], (B, L, config.text_dim))
    mask = jnp.ones((B, L), bool)
    forward = nnx.jit(lambda m, x, t: m(x, t, text=text, text_mask=mask))
    fwd_compile, fwd_s = timed(lambda: forward(model, x, t), repeats)
    graphdef, state = nnx.split(model)
    xla_flops = jax.jit(lambda s, x, t: nnx.merge(graphdef, s)(x, t, text=text, text_mask=mask)).lower(
        state, x, t).compile().cost_analysis()
    xla_flops = (xla_flops[0] if isinstance(xla_flops, list) else xla_flops).get("flops", float("nan"))

    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, t):
        def loss_fn(model):
            return jnp.mean((model(x, t, text=text, text_mask=mask) - x) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    step_compile, step_s = timed(lambda: train_step(model, optimizer, x, t), repeats)
    fwd_flops = 2e9 * dit.gflops(config, latent, L) * B
    return {
        f"{name}_params": dit.count_params(model), f"{name}_dtype": config.dtype,
        f"{name}_batch": [B, *latent], f"{name}_tokens": int(np.prod(patch_grid(latent, config.patch_size))),
        f"{name}_gflops_per_sample_macs": round(dit.gflops(config, latent, L), 3),
        f"{name}_forward_ms": round(1e3 * fwd_s, 1), f"{name}_forward_compile_s": round(fwd_compile, 2),
        f"{name}_train_step_ms": round(1e3 * step_s, 1), f"{name}_train_step_compile_s": round(step_compile, 2),
        f"{name}_forward_gflop_per_s": round(fwd_flops / fwd_s / 1e9, 1),
        f"{name}_forward_gflop_per_s_xla": round(xla_flops / fwd_s / 1e9, 1),
        f"{name}_train_gflop_per_s": round(3 * fwd_flops / step_s / 1e9, 1),
    }


def compile_seconds(name: str, scan: bool, batch: int = 2) -> float:
    """Seconds to compile a training-loss gradient of a preset, from abstract shapes only
    (no weights are allocated): what `scan_layers` buys on deep models."""
    config = dit.DIT_PRESETS[name].replace(scan_layers=scan)
    model = nnx.eval_shape(lambda: dit.DiT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, 1, 32, 32, config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)

    def loss(state, x, t, labels):
        return jnp.mean(nnx.merge(graphdef, state)(x, t, labels=labels) ** 2)

    t0 = time.perf_counter()
    jax.jit(jax.grad(loss)).lower(state, x, t, labels).compile()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="override the preset's compute dtype "
                        "(default: float32 on CPU, where bfloat16 matmuls are emulated and slow)")
    parser.add_argument("--compile-preset", default="DiT-XL/2",
                        help="deep preset whose gradient compile time is measured with and without scan_layers "
                        "('' to skip)")
    parser.add_argument("--json")
    args = parser.parse_args()
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else None)
    peak = matmul_gflops()
    results = {"backend": jax.default_backend(), "devices": jax.device_count(),
               "matmul_peak_gflop_per_s": round(peak / 1e9, 1)}
    for name in args.presets:
        r = bench(name, args.repeats, dtype)
        r[f"{name}_train_fraction_of_peak"] = round(r[f"{name}_train_gflop_per_s"] * 1e9 / peak, 3)
        results.update(r)
    if args.compile_preset:
        name = args.compile_preset
        results[f"{name}_grad_compile_s_unrolled"] = round(compile_seconds(name, scan=False), 1)
        results[f"{name}_grad_compile_s_scan"] = round(compile_seconds(name, scan=True), 1)
    report(results, args.json)


if __name__ == "__main__":
    main()
