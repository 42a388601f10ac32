"""Chapter 10's measurements on whatever devices this machine has: the real `train_dit`
(the path `train-dit` runs, on a synthetic latent cache) for each precision and mesh
asked for, then the sampler. Per configuration it reports the compile time, seconds per
step, video tokens per second, model FLOPs per step and MFU (from the training log, against
`parallel.peak_flops`: the datasheet for known GPUs/TPUs, a measured matmul on a CPU), the
weights + EMA bytes held by one device, the process's peak device memory so far where the
backend reports it (cumulative: to compare two configurations' memory, run each in its own
process), and the final loss, so bf16 and float32 can be compared at equal steps.

    # the CPU, the shipped tiny model's shapes:
    python benchmarks/bench_parallel.py --model tiny --latent 9,8,8,8 --batch 32 --steps 12
    # one GPU or TPU: DiT-B/2 on a 16x32x32x8 video latent (4,096 tokens), bf16 and float32:
    python benchmarks/bench_parallel.py --model DiT-B/2 --latent 16,32,32,8 --batch 8 --steps 12 \\
        --precision bfloat16,float32 --json bench_parallel.json
    # FSDP over 8 simulated CPU devices:
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_parallel.py --mesh data=2,fsdp=4
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from _report import report
from sora_mini import parallel, sampling, store, train
from sora_mini.captions import ATTRIBUTE_CLASSES
from sora_mini.data import ShapesWorldConfig, make_clip
from sora_mini.dit import DIT_PRESETS
from sora_mini.model import TextToVideoModel
from sora_mini.patchify import patch_grid
from sora_mini.text import TEXT_PRESETS, Tokenizer


def build(name: str, channels: int) -> TextToVideoModel:
    """The shipped tiny text-to-video model's shapes, or an image DiT paper size (e.g.
    DiT-B/2) made text-conditional on video latents with `channels` channels."""
    text = TEXT_PRESETS["tiny"].replace(attribute_classes=ATTRIBUTE_CLASSES)
    if name in ("tiny", "small"):
        dit = DIT_PRESETS[name].replace(in_channels=channels, dtype="float32")
        text = TEXT_PRESETS[name].replace(attribute_classes=ATTRIBUTE_CLASSES)
    else:
        dit = DIT_PRESETS[name].replace(in_channels=channels, text_dim=text.dim, num_classes=None, learn_sigma=False,
                                        pos_embed="rope", qk_norm=True, frame_conditioning=True)
    return TextToVideoModel(text, dit.replace(text_dim=text.dim), rngs=nnx.Rngs(0))


def cache(latent, n: int) -> dict:
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(n, *latent)).astype(np.float32)
    world = ShapesWorldConfig(height=16, width=16, num_frames=5)
    return {"mean": mean, "logvar": np.full_like(mean, -4.0),
            "caption": np.asarray([make_clip(world, s).caption for s in range(n)])}


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, small, or an image DiT size such as DiT-B/2")
    parser.add_argument("--latent", default="9,8,8,8", help="t,h,w,c of the video latent")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed training steps (the first compiles)")
    parser.add_argument("--precision", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--mesh", action="append", default=None, help="a mesh, e.g. data=2,fsdp=4 (repeatable)")
    parser.add_argument("--sample-steps", type=int, default=50, help="Euler steps of the timed sampler (0: skip)")
    parser.add_argument("--json")
    args = parser.parse_args()
    latent = tuple(int(v) for v in args.latent.split(","))
    data = cache(latent, 2 * args.batch)
    tokens = int(np.prod(patch_grid(latent, build(args.model, latent[-1]).dit.config.patch_size)))
    peak, source = parallel.peak_flops()
    results = {"date": datetime.date.today().isoformat(),
               "command": shlex.join(["python", "benchmarks/bench_parallel.py", *sys.argv[1:]]),
               "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "peak_flops": f"{peak:.3g}",
               "peak_source": source, "model": args.model, "latent": args.latent, "tokens": tokens,
               "batch": args.batch}
    for mesh_text in args.mesh or [""]:
        for precision in args.precision.split(","):
            tag = f"{precision}{'_' + mesh_text.replace(',', '_').replace('=', '') if mesh_text else ''}"
            tc = train.DiTTrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=1, log_every=1,
                                      save_every=10 ** 9, precision=precision, caption_loss=1.0)
            with tempfile.TemporaryDirectory() as out:
                model, ema = train.train_dit(build(args.model, latent[-1]), data, tc, out, progress=False,
                                             mesh=parallel.MeshShape.parse(mesh_text))
                log = store.read_log(out)
            step_s = (log[-1]["time"] - log[0]["time"]) / (len(log) - 1)
            results[f"{tag}_compile_s"] = round(log[0]["time"], 2)
            results[f"{tag}_step_s"] = round(step_s, 4)
            results[f"{tag}_tokens_per_s"] = round(args.batch * tokens / step_s)
            results[f"{tag}_model_tflops_per_step"] = round(log[-1]["model_flops"] / 1e12, 4)
            results[f"{tag}_mfu"] = round(float(np.median([r["mfu"] for r in log[1:]])), 4)
            results[f"{tag}_weights_ema_bytes_per_device"] = (parallel.bytes_per_device(nnx.state(model, nnx.Param))
                                                              + parallel.bytes_per_device(ema))
            results[f"{tag}_peak_memory_bytes"] = peak_memory()
            results[f"{tag}_final_loss"] = round(log[-1]["loss"], 4)

    if args.sample_steps:
        model = build(args.model, latent[-1])
        ids, mask = (jnp.asarray(a) for a in Tokenizer.shapes_world(model.text.config.max_length)(
            ["a red circle moves to the right"] * args.batch))

        @nnx.jit
        def generate(model, noise):
            encoded = model.text(ids, mask)
            return sampling.sample(lambda x, t: model.denoise(x, t, encoded, mask), noise, steps=args.sample_steps)

        noise = jax.random.normal(jax.random.key(0), (args.batch, *latent))
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model, noise))
        results["sample_compile_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        jax.block_until_ready(generate(model, noise))
        results["sample_s_per_batch"] = round(time.perf_counter() - t0, 3)
        results["sample_videos_per_s"] = round(args.batch / results["sample_s_per_batch"], 3)
    report(results, args.json)


if __name__ == "__main__":
    main()
