"""Diffusion training speed on this machine: the real text-to-video step of `train-dit`
(`train.make_dit_train_step`: posterior sample, caption dropout, known frames,
flow-matching loss, the caption-attribute loss, AdamW, EMA) for a preset's models and
settings at its training batch, on the device mesh `train_dit` uses. Reports compile
time, steps per second, clips per second and achieved FLOP/s against the float32 matmul
peak. FLOPs come from XLA's cost analysis of the compiled step (forward, backward and
update together).

    python benchmarks/bench_train_dit.py [--preset tiny] [--batch-size 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from _report import report
from sora_mini import loop, parallel, text, train
from sora_mini.model import TextToVideoModel
from sora_mini.captions import caption_label_matrix
from sora_mini.presets import DIT_TRAIN_PRESETS, dit_preset_configs



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(DIT_TRAIN_PRESETS))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    p = DIT_TRAIN_PRESETS[args.preset]
    B = args.batch_size or p.batch_size
    text_config, dit_config, diffusion_config, caption_loss = dit_preset_configs(args.preset)
    tc = train.DiTTrainConfig(batch_size=B, learning_rate=p.learning_rate, caption_loss=caption_loss)
    model = TextToVideoModel(text_config, dit_config, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    tokenizer = text.Tokenizer.shapes_world()
    captions = ["a small red circle moves to the right and bounces off the wall"] * B
    ids, mask = tokenizer(captions)
    empty = jnp.asarray(tokenizer("")[0][0])
    rng = np.random.default_rng(0)
    mean = jnp.asarray(rng.normal(size=(B, *p.latent)), jnp.float32)
    logvar = jnp.full_like(mean, -4.0)

    mesh = parallel.make_mesh()  # train_dit's default: data parallel over every device
    sharded = jax.sharding.NamedSharding(mesh, parallel.BATCH)
    batch = jax.device_put((mean, logvar, ids, mask), sharded)
    labels = jax.device_put(caption_label_matrix(captions), sharded) if caption_loss else None
    step = train.make_dit_train_step(diffusion_config, tc)
    graphdef, state = nnx.split((model, optimizer))
    costs = jax.jit(lambda s, e, *b: step(*nnx.merge(graphdef, s), e, *b)).lower(
        state, ema, *batch, empty, jax.random.key(0), labels).compile().cost_analysis()
    flops = (costs[0] if isinstance(costs, list) else costs).get("flops", float("nan"))

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # Placed as train_dit places them, so the step's outputs match its inputs (no recompile).
    nnx.update(model, jax.device_put(nnx.state(model), replicated))
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))
    ema = jax.device_put(ema, replicated)
    t0 = time.perf_counter()
    ema, metrics = step(model, optimizer, ema, *batch, empty, jax.random.key(0), labels)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ema, metrics = step(model, optimizer, ema, *batch, empty, jax.random.key(0), labels)  # must not recompile
    jax.block_until_ready(metrics)
    second_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(args.repeats):
        ema, metrics = step(model, optimizer, ema, *batch, empty, jax.random.key(i + 1), labels)
    jax.block_until_ready((ema, metrics))
    step_s = (time.perf_counter() - t0) / args.repeats
    peak = loop.matmul_gflops()
    report({"backend": jax.default_backend(), "devices": mesh.size, "preset": args.preset,
            "params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
            "batch": [B, *p.latent], "train_step_compile_s": round(compile_s, 2),
            "train_step_ms": round(1e3 * step_s, 1),
            "second_step_ms": round(1e3 * second_s, 1), "steps_per_s": round(1 / step_s, 2),
            "clips_per_s": round(B / step_s, 1), "gflop_per_step_xla": round(flops / 1e9, 2),
            "achieved_gflop_per_s": round(flops / step_s / 1e9, 1), "matmul_peak_gflop_per_s": round(peak / 1e9, 1),
            "fraction_of_peak": round(flops / step_s / peak, 3),
            "hour_of_steps": int(3600 / step_s)}, args.json)


if __name__ == "__main__":
    main()
