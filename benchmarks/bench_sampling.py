"""Text-to-video generation speed on this machine: compile time and seconds per video
(17x32x32, 50 Euler steps with classifier-free guidance, VAE decoding included) for the
tiny preset; then image-to-video (the same compiled program: no new compile), a
49-frame long video (three overlapping windows), classifier guidance (one more
backward pass through the guidance classifier per step) when the model ships one, and
the main DiT alone when the model ships a low-noise expert (the default splits the steps
between the two, each step running one of them). Uses
the shipped model when present, else random weights of the same shapes (speed does not
depend on the weights).

    python benchmarks/bench_sampling.py [--model tiny] [--steps 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import time

import jax
from flax import nnx

from _report import report
from sora_mini import dit, pipeline, text
from sora_mini.diffusion import DiffusionConfig
from sora_mini.vae import VAE_PRESETS, VideoVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="a shipped model's name or an exported directory")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        pipe, weights = pipeline.TextToVideo.from_pretrained(args.model), "shipped"
    except FileNotFoundError:
        model = pipeline.TextToVideoModel(text.TEXT_PRESETS["tiny"], dit.DIT_PRESETS["tiny"], rngs=nnx.Rngs(0))
        pipe = pipeline.TextToVideo(VideoVAE(VAE_PRESETS["tiny"], rngs=nnx.Rngs(0)), model, DiffusionConfig(), 1.0)
        weights = "random"
    prompt = "a red circle moves to the right"
    kw = dict(steps=args.steps, sampler=args.sampler, guidance=args.guidance, classifier_guidance=0.0)

    def timed(**extra):
        # (seconds of the first call, compile included; mean seconds of `repeats` further calls)
        t0 = time.perf_counter()
        pipe(prompt, seed=0, **{**kw, **extra})
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for seed in range(1, args.repeats + 1):
            pipe(prompt, seed=seed, **{**kw, **extra})
        return first, (time.perf_counter() - t0) / args.repeats

    first, per_video = timed()
    compiled = len(pipe._compiled)
    image = pipe(prompt, seed=0, **kw)[0]
    _, per_i2v = timed(image=image)
    i2v_recompiled = len(pipe._compiled) > compiled
    t0 = time.perf_counter()
    pipe.long_video(prompt, 49, seed=0, **kw)
    long_s = time.perf_counter() - t0
    classifier = {}
    if pipe.classifier is not None:
        first_guided, per_guided = timed(classifier_guidance=pipe.classifier_guidance)
        classifier = {"classifier_guidance": pipe.classifier_guidance,
                      "classifier_guided_compile_s": round(first_guided - per_guided, 2),
                      "classifier_guided_seconds_per_video": round(per_guided, 3)}
    experts = {}
    if pipe.low_noise_model is not None:
        first_alone, per_alone = timed(low_noise_below=0.0)
        experts = {"low_noise_below": pipe.low_noise_below,
                   "main_dit_alone_compile_s": round(first_alone - per_alone, 2),
                   "main_dit_alone_seconds_per_video": round(per_alone, 3)}
    report({"backend": jax.default_backend(), "weights": weights, "video": [17, 32, 32], "sampler": args.sampler,
            "steps": args.steps, "guidance": args.guidance, "first_video_s_with_compile": round(first, 2),
            "compile_s": round(first - per_video, 2), "seconds_per_video": round(per_video, 3),
            "image_to_video_seconds": round(per_i2v, 3), "image_to_video_recompiled": i2v_recompiled,
            "long_video_49_frames_s": round(long_s, 2), **classifier, **experts}, args.json)


if __name__ == "__main__":
    main()
