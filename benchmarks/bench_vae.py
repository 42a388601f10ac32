"""VideoVAE speed on this machine: compile time, encode and decode clips per second, and
the training step time, for a preset (default tiny) on 17x32x32 clips.

    python benchmarks/bench_vae.py [--preset tiny] [--batch 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import jax
from flax import nnx

from _report import report
from sora_mini import loop, store, train, vae


def timed(fn, *args, repeats: int = 5):
    """(first-call seconds including compilation, mean seconds of later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return first, (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=16, help="clips per encode/decode call")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()

    config = vae.VAE_PRESETS[args.preset]
    model = vae.VideoVAE(config, rngs=nnx.Rngs(0))
    video = jax.random.uniform(jax.random.key(0), (args.batch, args.frames, args.size, args.size, 3),
                               minval=-1, maxval=1)
    encode = nnx.jit(lambda m, x: m.encode(x)[0])
    decode = nnx.jit(lambda m, z: m.decode(z))
    enc_compile, enc_s = timed(encode, model, video)
    z = encode(model, video)
    dec_compile, dec_s = timed(decode, model, z)

    tc = train.VAETrainConfig(batch_size=args.train_batch)
    opt = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    batch = video[: args.train_batch, : tc.num_frames]
    step_compile, step_s = timed(lambda: train.vae_train_step(model, opt, batch, jax.random.key(1))["loss"],
                                 repeats=5)
    crop = batch[:, :, :16, :16]  # the tiny preset trains on 16x16 crops
    crop_compile, crop_s = timed(lambda: train.vae_train_step(model, opt, crop, jax.random.key(1))["loss"],
                                 repeats=10)
    results = {
        "preset": args.preset, "params": store.count_params(model), "backend": jax.default_backend(),
        "clip": [args.frames, args.size, args.size], "latent": list(z.shape[1:]),
        "encode_clips_per_s": round(args.batch / enc_s, 1), "decode_clips_per_s": round(args.batch / dec_s, 1),
        "encode_compile_s": round(enc_compile, 2), "decode_compile_s": round(dec_compile, 2),
        "train_step_s": round(step_s, 3), "train_step_compile_s": round(step_compile, 2),
        "train_batch": [args.train_batch, tc.num_frames, args.size, args.size],
        "train_step_crop16_s": round(crop_s, 3), "train_step_crop16_compile_s": round(crop_compile, 2),
    }
    report(results, args.json)


if __name__ == "__main__":
    main()
