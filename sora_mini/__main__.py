"""The sora-mini command line: `python -m sora_mini --help`.

Subcommands grow with the course; each one is a thin wrapper over the package's API."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from sora_mini import data as data_lib


def _world_config(args) -> data_lib.ShapesWorldConfig:
    config = data_lib.SHAPES_WORLD_PRESETS[args.preset]
    changes = {k: v for k, v in (("height", args.size), ("width", args.size),
                                 ("num_frames", args.frames)) if v is not None}
    return config.replace(**changes)


def _parse_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        if name not in data_lib.SPLIT_SEED_OFFSETS or not n.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected SPLIT=N[,SPLIT=N...] with splits from {list(data_lib.SPLIT_SEED_OFFSETS)}, "
                f"got {part!r}")
        sizes[name] = int(n)
    return sizes


def cmd_build_data(args) -> None:
    config = _world_config(args)
    t0 = time.perf_counter()
    dd = data_lib.build_dataset(config, args.out, args.splits, num_proc=args.num_proc)
    n = sum(len(d) for d in dd.values())
    print(f"built {n} clips ({', '.join(f'{k}={len(v)}' for k, v in dd.items())}) of "
          f"{config.num_frames}x{config.height}x{config.width} in {time.perf_counter() - t0:.1f}s "
          f"-> {args.out}")


def _check_saved_world(path: str, world) -> None:
    """Raise if the dataset at `path` was built from another world than `world`."""
    saved = dataclasses.asdict(data_lib.load_config(path))
    differ = sorted(k for k, v in dataclasses.asdict(world).items() if saved[k] != v)
    if differ:
        raise ValueError(f"{path} holds a shapes world other than the one asked for (it differs in "
                         f"{', '.join(differ)}); pass another --data, or delete it to rebuild")


def cmd_world_grid(args) -> None:
    from sora_mini import video as video_lib

    config = _world_config(args)
    if not os.path.exists(os.path.join(args.data, "shapes_world_config.json")):
        print(f"building the shapes world into {args.data} ...")
        cmd_build_data(argparse.Namespace(**{**vars(args), "out": args.data}))
    else:
        _check_saved_world(args.data, config)
    ds = data_lib.load_shapes_world(args.data, "train")
    n = args.rows * args.cols
    rows = ds[:n]
    videos = [v.astype("uint8") for v in rows["video"]]
    grid = video_lib.video_grid([video_lib.upscale(v, args.scale) for v in videos], cols=args.cols)
    os.makedirs(args.out, exist_ok=True)
    mp4 = video_lib.write_video(os.path.join(args.out, "shapes_world_grid.mp4"), grid, fps=config.fps)
    gif = video_lib.write_video(os.path.join(args.out, "shapes_world_grid.gif"), grid, fps=config.fps)
    captions = os.path.join(args.out, "captions.txt")
    with open(captions, "w") as f:
        for i, caption in enumerate(rows["caption"]):
            r, c = divmod(i, args.cols)
            f.write(f"row {r + 1}, col {c + 1}: {caption}\n")
    print(open(captions).read(), end="")
    print(f"\nwrote {mp4}\n      {gif}\n      {captions}")


# The gallery `make demo` writes: colours, shapes, directions, falls, counts, two objects,
# the pillar, and a colour-shape pair the model never saw in training (red triangle).
DEMO_PROMPTS = (
    "a red circle moves to the right",
    "a large blue square moves left",
    "a small green triangle moves up",
    "a yellow circle moves down and to the right",
    "a white square falls and bounces on the floor",
    "a purple triangle stays still on a gray background",
    "a big orange circle quickly moves to the left, on navy",
    "a cyan square slowly moves diagonally up and right",
    "two small red squares move down",
    "a green circle moves right and a white triangle moves left",
    "a large blue triangle moves to the right and passes behind the pillar",
    "a red triangle moves to the left",
)


def cmd_demo(args) -> None:
    from sora_mini import evaluate, pipeline
    from sora_mini import video as video_lib

    t0 = time.perf_counter()
    model = pipeline.TextToVideo.from_pretrained(args.model)
    prompts = DEMO_PROMPTS[: args.n]
    videos = [model(p, seed=args.seed + i, steps=args.steps, guidance=args.guidance,
                    classifier_guidance=args.classifier_guidance, low_noise_below=args.low_noise_below)
              for i, p in enumerate(prompts)]
    notes = []
    for v in videos:  # what the shapes-world detector reads back from each video
        found = evaluate.detect(v)
        objects = ", ".join(f"{o.color} {o.shape} {o.direction()}" for o in found.objects[:3]) or "nothing"
        notes.append(f"detector reads: {objects} on {found.background}")
    page = video_lib.write_gallery(args.out, videos, prompts, notes=notes, scale=args.scale,
                                   title=f"sora-mini: {len(prompts)} prompts, {args.model}")
    for prompt, note in zip(prompts, notes):
        print(f"{prompt!r}\n    {note}")
    print(f"\n{len(prompts)} videos in {time.perf_counter() - t0:.1f}s (load, compile, sample, write)")
    print(f"open {os.path.abspath(page)}")


VAE_TRAIN_PRESETS = {
    # ~55 minutes on a 2-core CPU: 16x16 crops of 9-frame clips.
    "tiny": dict(world="tiny", steps=8000, batch_size=8, num_frames=9, crop_size=16),
    "small": dict(world="small", steps=20000, batch_size=16, num_frames=17, crop_size=None),
    "base": dict(world="base", steps=100000, batch_size=32, num_frames=17, crop_size=None),
}


def cmd_train_vae(args) -> None:
    from sora_mini import train, vae

    if args.preset not in vae.VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {args.preset!r}; expected one of {sorted(vae.VAE_PRESETS)}")
    p = VAE_TRAIN_PRESETS[args.preset]
    tc = train.TrainConfig(steps=args.steps or p["steps"], batch_size=args.batch_size or p["batch_size"],
                           num_frames=p["num_frames"], crop_size=p["crop_size"], warmup_steps=200,
                           save_every=500, learning_rate=args.lr or train.TrainConfig.learning_rate)
    world = data_lib.SHAPES_WORLD_PRESETS[p["world"]]
    model = train.train_vae(vae.VAE_PRESETS[args.preset], tc, args.out, world, init_from=args.init)
    if args.export:
        command = "python -m sora_mini " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else ""
        vae.export_pretrained(model, args.export, run_dir=args.out, world=world,
                              extra={"command": command, "train": dataclasses.asdict(tc)})
        print(f"exported the VAE to {args.export}")


def cmd_encode_latents(args) -> None:
    import numpy as np

    from sora_mini import vae

    model = vae.VideoVAE.from_pretrained(args.vae)
    ds = data_lib.load_shapes_world(args.data, args.split)
    t0 = time.perf_counter()
    cache = vae.encode_dataset(model, ds, args.batch_size)
    if not args.out.endswith(".npz"):
        args.out += ".npz"  # np.savez would add it silently; say the real name
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **cache)
    print(f"encoded {len(ds)} clips of {args.split} to latents {cache['mean'].shape[1:]} in "
          f"{time.perf_counter() - t0:.1f}s -> {args.out}")


DIT_TRAIN_PRESETS = {
    # tiny: 0.44 s per step of batch 32 (9x8x8x8 latents) on a 2-core CPU, so 6,000 steps take
    # about 45 minutes; lr 1e-3 beat 3e-4 at equal steps (shape read right 0.65 against 0.30).
    # New runs condition on frames (chapter 08) and shift training times toward noise
    # (SD3's shift 3), where the direction of motion is decided. The direction is only in the
    # words: the caption-attribute loss keeps "left" and "right" apart in the text encoder,
    # and absolute positions let the DiT say where an object starts (RoPE alone is relative:
    # from pure noise it cannot put anything "on the left"). The shift costs shape, which is
    # decided at t = 0.2-0.6 (24% of shifted training times, 57% unshifted): the same recipe
    # unshifted, with output_conv=32, drew the prompted shape in 0.71 of 128 test videos
    # (this recipe: 0.55) but moved the object the prompted way in only 0.34 (this: 0.75), and
    # half the times unshifted (unshifted_fraction=0.5) got neither (0.62 and 0.52). The shipped
    # model has both: this recipe while t > 0.5, and after it a low-noise expert fine-tuned from
    # it (Wan 2.2) on unshifted times below 0.5 only, with output_conv=32: 1,600 steps, 14 min.
    "tiny": dict(text="tiny", steps=6000, batch_size=32, learning_rate=1e-3, frame_conditioning=True, time_shift=3.0,
                 unshifted_fraction=0.0, max_time=1.0, absolute_pos=True, caption_loss=1.0,
                 low_noise_expert=dict(steps=1600, learning_rate=5e-4, time_shift=1.0, max_time=0.5, output_conv=32,
                                       below=0.5)),
    "small": dict(text="small", steps=50000, batch_size=64, learning_rate=2e-4, frame_conditioning=True,
                  time_shift=3.0, unshifted_fraction=0.0, max_time=1.0, absolute_pos=True, caption_loss=1.0),
}


def dit_preset_configs(preset: str, *, frame_conditioning: bool | None = None, absolute_pos: bool | None = None,
                       time_shift: float | None = None, unshifted_fraction: float | None = None,
                       caption_loss: float | None = None, output_conv: int | None = None,
                       max_time: float | None = None):
    """`(text_config, dit_config, diffusion_config, caption_loss)` of a `train-dit` preset;
    each keyword left None takes the preset's value."""
    from sora_mini import diffusion, dit, guidance, text

    if preset not in DIT_TRAIN_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; expected one of {sorted(DIT_TRAIN_PRESETS)}")
    p = DIT_TRAIN_PRESETS[preset]

    def pick(value, key):
        return p[key] if value is None else value

    caption_loss = pick(caption_loss, "caption_loss")
    text_config = text.TEXT_PRESETS[p["text"]].replace(attribute_classes=guidance.ATTRIBUTE_CLASSES if caption_loss
                                                       else 0)
    dit_config = dit.DIT_PRESETS[preset].replace(frame_conditioning=pick(frame_conditioning, "frame_conditioning"),
                                                 absolute_pos=pick(absolute_pos, "absolute_pos"))
    if output_conv is not None:
        dit_config = dit_config.replace(output_conv=output_conv)
    diffusion_config = diffusion.DiffusionConfig(time_shift=pick(time_shift, "time_shift"),
                                                 unshifted_fraction=pick(unshifted_fraction, "unshifted_fraction"),
                                                 max_time=pick(max_time, "max_time"))
    return text_config, dit_config, diffusion_config, caption_loss


def cmd_train_dit(args) -> None:
    import json

    import numpy as np
    from flax import nnx

    from sora_mini import pipeline, train

    text_config, dit_config, diffusion_config, caption_loss = dit_preset_configs(
        args.preset, frame_conditioning=args.frame_conditioning, absolute_pos=args.absolute_pos,
        time_shift=args.time_shift, unshifted_fraction=args.unshifted_fraction, caption_loss=args.caption_loss,
        output_conv=args.output_conv, max_time=args.max_time)
    p = DIT_TRAIN_PRESETS[args.preset]
    manifest_path = os.path.join(args.vae, "manifest.json")
    if not os.path.exists(manifest_path):
        raise FileNotFoundError(f"no exported VAE manifest at {manifest_path}: the DiT needs its latent_scale "
                                "(python -m sora_mini train-vae ... --export DIR)")
    with open(manifest_path) as f:
        vae_manifest = json.load(f)
    latent_scale = float(vae_manifest["metrics"]["latent_scale"])
    if vae_manifest["config"]["latent_channels"] != dit_config.in_channels:
        raise ValueError(f"the VAE in {args.vae} makes {vae_manifest['config']['latent_channels']} latent channels; "
                         f"the {args.preset} DiT reads {dit_config.in_channels}")
    if not os.path.exists(args.latents):
        raise FileNotFoundError(f"no latent cache at {args.latents}: make one with "
                                f"python -m sora_mini encode-latents --vae {args.vae} --out {args.latents}")
    latents = dict(np.load(args.latents))
    if latents["mean"].shape[-1] != dit_config.in_channels:
        raise ValueError(f"the latents have {latents['mean'].shape[-1]} channels, the {args.preset} DiT expects "
                         f"{dit_config.in_channels}")
    tc = train.DiTTrainConfig(steps=args.steps or p["steps"], batch_size=args.batch_size or p["batch_size"],
                              learning_rate=args.lr or p["learning_rate"], latent_scale=latent_scale,
                              caption_loss=caption_loss)
    settings = {"text": dataclasses.asdict(text_config), "dit": dataclasses.asdict(dit_config),
                "vae": os.path.abspath(args.vae), "latents": os.path.abspath(args.latents),
                "init": args.init and os.path.abspath(args.init)}
    model = pipeline.TextToVideoModel(text_config, dit_config, rngs=nnx.Rngs(tc.seed))
    init_manifest = os.path.join(args.out, "init_manifest.json")
    if args.init and not os.path.exists(os.path.join(args.out, "checkpoints")):
        # Read (and keep) the manifest now: the export at the end may overwrite args.init.
        os.makedirs(args.out, exist_ok=True)
        train._write_json(init_manifest, pipeline.init_from_pretrained(model, args.init))
        print(f"initialised from the pretrained model in {args.init}")
    train.train_dit(model, latents, tc, args.out, diffusion_config, settings=settings)
    print(f"trained the DiT: {args.out}")
    if args.export:
        command = "python -m sora_mini " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else ""
        extra = {"command": command}
        if os.path.exists(init_manifest):  # a fine-tune: record the stage it started from
            with open(init_manifest) as f:
                extra["init"] = json.load(f)
        pipeline.export_pretrained(args.out, args.export, args.vae, extra=extra, low_noise_below=args.low_noise_below)
        print(f"exported the text-to-video model (EMA weights + VAE) to {args.export}" if args.low_noise_below is None
              else f"exported the low-noise expert (t <= {args.low_noise_below:g}) to {args.export}/low_noise")


# What one unit of each stage of `train-all` costs on the reference machine (this course's
# 2-core CPU, whose float32 matmul peaks near REFERENCE_GFLOPS), measured by the
# benchmarks and the shipped runs. The estimate scales them by a quick matmul probe.
REFERENCE_GFLOPS = 470.0
TRAIN_ALL_COSTS = {"tiny": {"build_data_s": 40.0, "vae_step_s": 0.10, "encode_clip_s": 1 / 126, "dit_step_s": 0.45,
                            "expert_step_s": 0.52}}


def _exported(path: str, steps: int) -> bool:
    """Whether `path` holds an export (VAE or DiT) whose training reached `steps`."""
    import json

    manifest = os.path.join(path, "manifest.json")
    if not os.path.exists(manifest):
        return False
    with open(manifest) as f:
        return json.load(f).get("steps") == steps


def cmd_train_all(args) -> None:
    """Shapes world -> VAE -> latent cache -> DiT (-> its low-noise expert, where the preset
    has one) -> a model `generate` and `demo` can use. Every stage resumes or is skipped when
    its output exists, so rerunning continues."""
    from sora_mini import train

    vae_steps = args.vae_steps or VAE_TRAIN_PRESETS[args.preset]["steps"]
    dit_steps = args.dit_steps or DIT_TRAIN_PRESETS[args.preset]["steps"]
    export = args.export or os.path.join(args.out, "pretrained")
    expert = DIT_TRAIN_PRESETS[args.preset].get("low_noise_expert") if args.low_noise_expert else None
    expert_steps = (args.expert_steps or expert["steps"]) if expert else 0
    world = data_lib.SHAPES_WORLD_PRESETS[VAE_TRAIN_PRESETS[args.preset]["world"]]
    has_data = os.path.exists(os.path.join(args.data, "shapes_world_config.json"))
    if has_data:
        _check_saved_world(args.data, world)
    splits = {k: min(v, args.train_clips) for k, v in data_lib.DEFAULT_SPLIT_SIZES.items()}
    clips = len(data_lib.load_shapes_world(args.data, "train")) if has_data else splits["train"]
    if args.preset in TRAIN_ALL_COSTS:
        gflops = train.matmul_gflops(1024, repeats=5) / 1e9
        scale = REFERENCE_GFLOPS / gflops
        c = TRAIN_ALL_COSTS[args.preset]
        stages = [("build the shapes world", 0.0 if has_data else c["build_data_s"] * clips / 10_000),
                  (f"train the VAE, {vae_steps} steps", vae_steps * c["vae_step_s"]),
                  (f"encode {clips} clips to latents", clips * c["encode_clip_s"]),
                  (f"train the DiT, {dit_steps} steps", dit_steps * c["dit_step_s"])]
        if expert:
            stages.append((f"fine-tune a low-noise expert, {expert_steps} steps", expert_steps * c["expert_step_s"]))
        print(f"train-all --preset {args.preset}: this machine does {gflops:.0f} GFLOP/s on a float32 matmul (the "
              f"reference CPU {REFERENCE_GFLOPS:.0f}); estimated time (finished stages are skipped):")
        for name, seconds in stages:
            print(f"  {name:<40} {seconds * scale / 60:6.1f} min")
        print(f"  {'total':<40} {sum(s for _, s in stages) * scale / 60:6.1f} min\n", flush=True)
    else:
        print(f"train-all --preset {args.preset}: no timing measured for this preset (it is sized for a GPU/TPU); "
              f"{vae_steps} VAE steps, {dit_steps} DiT steps{f' and {expert_steps} expert steps' if expert else ''}\n",
              flush=True)
    if args.dry_run:
        return

    if not has_data:
        cmd_build_data(argparse.Namespace(preset=VAE_TRAIN_PRESETS[args.preset]["world"], size=None, frames=None,
                                          splits=splits, num_proc=None, out=args.data))
    vae_dir = os.path.join(export, "vae")
    if not _exported(vae_dir, vae_steps):
        cmd_train_vae(argparse.Namespace(preset=args.preset, out=os.path.join(args.out, "vae"), steps=vae_steps,
                                         batch_size=None, lr=None, init=None, export=vae_dir))
    latents = os.path.join(args.out, "latents.npz")
    if not os.path.exists(latents):
        cmd_encode_latents(argparse.Namespace(vae=vae_dir, data=args.data, split="train", out=latents,
                                              batch_size=32))
    dit = dict(preset=args.preset, vae=vae_dir, latents=latents, batch_size=None, export=export,
               unshifted_fraction=None, frame_conditioning=None, absolute_pos=None, caption_loss=None)
    if not _exported(os.path.join(export, "dit"), dit_steps):
        cmd_train_dit(argparse.Namespace(**dit, out=os.path.join(args.out, "dit"), steps=dit_steps, lr=None, init=None,
                                         time_shift=None, max_time=None, output_conv=None, low_noise_below=None))
    if expert and not _exported(os.path.join(export, "low_noise"), expert_steps):
        # Fine-tuned from the main DiT just exported, on its own band of times only.
        cmd_train_dit(argparse.Namespace(**dit, out=os.path.join(args.out, "dit_low_noise"), steps=expert_steps,
                                         lr=expert["learning_rate"], init=export, time_shift=expert["time_shift"],
                                         max_time=expert["max_time"], output_conv=expert["output_conv"],
                                         low_noise_below=expert["below"]))
    print(f"done: python -m sora_mini generate \"a red circle moves to the right\" --model {export}")


def cmd_generate(args) -> None:
    from sora_mini import pipeline
    from sora_mini import video as video_lib

    t0 = time.perf_counter()
    model = pipeline.TextToVideo.from_pretrained(args.model)
    t1 = time.perf_counter()
    frames_in = {}
    for name in ("image", "video", "end"):
        path = getattr(args, name)
        if path:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--{name} {path}: no such file")
            frames_in[name] = (video_lib.read_image(path) if name == "image" or not path.endswith((".mp4", ".gif"))
                               else video_lib.read_video(path))
    if args.long:
        clip = model.long_video(args.prompt, args.frames, seed=args.seed, steps=args.steps, guidance=args.guidance,
                                sampler=args.sampler, height=args.size, width=args.size,
                                classifier_guidance=args.classifier_guidance, low_noise_below=args.low_noise_below)
    else:
        mask = None if args.mask is None else [c == "1" for c in args.mask]
        clip = model(args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                     num_frames=args.frames, height=args.size, width=args.size, mode=args.mode, mask=mask,
                     strength=args.strength, classifier_guidance=args.classifier_guidance,
                     low_noise_below=args.low_noise_below, **frames_in)
    t2 = time.perf_counter()
    frames = video_lib.upscale(clip, args.scale) if args.scale > 1 else clip
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    video_lib.write_video(args.out, frames)
    if args.gif:
        video_lib.write_video(os.path.splitext(args.out)[0] + ".gif", frames)
    print(f"{args.prompt!r} -> {args.out} ({clip.shape[0]} frames of {clip.shape[1]}x{clip.shape[2]}; "
          f"load {t1 - t0:.1f}s, compile + sample {t2 - t1:.1f}s)")


def cmd_train_classifier(args) -> None:
    from sora_mini import fvd

    t0 = time.perf_counter()
    model = fvd.train_classifier(steps=args.steps, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    accuracy = fvd.classifier_accuracy(model, n=512, split="test")
    command = "python -m sora_mini " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else ""
    fvd.export_classifier(model, args.out, {"model": "VideoClassifier (features for the shapes world's FVD)",
                                            "steps": args.steps, "batch_size": args.batch_size,
                                            "wall_time_s": round(seconds, 1), "test_accuracy": accuracy,
                                            "command": command})
    print(f"trained the video classifier in {seconds:.0f}s; test accuracy "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) + f" -> {args.out}")


def cmd_train_guidance(args) -> None:
    """The classifier of noisy latents that classifier guidance steers a pretrained model
    with, trained on the model's own latent space and time grid; the last `--held-out`
    clips of the cache are kept out to measure it."""
    import json

    import numpy as np

    from sora_mini import fvd, guidance, pipeline
    from sora_mini.vae import count_params

    settings_path = os.path.join(args.model, "dit", "config.json")
    if not os.path.exists(settings_path):
        raise FileNotFoundError(f"no pretrained text-to-video model at {args.model} (expected dit/config.json)")
    with open(settings_path) as f:
        settings = json.load(f)
    _, dit_config, diffusion_config = pipeline._configs(settings)
    if not os.path.exists(args.latents):
        raise FileNotFoundError(f"no latent cache at {args.latents}: "
                                "make one with `python -m sora_mini encode-latents`")
    cache = dict(np.load(args.latents))
    if cache["mean"].shape[-1] != dit_config.in_channels:
        raise ValueError(f"the cache's latents have {cache['mean'].shape[-1]} channels, the model's "
                         f"{dit_config.in_channels}: encode them with the model's VAE ({args.model}/vae)")
    n = len(cache["mean"]) - args.held_out
    if n < args.batch_size:
        raise ValueError(f"{len(cache['mean'])} clips leave {n} to train on after --held-out {args.held_out}")
    train_rows = {k: v[:n] for k, v in cache.items()}
    held_out = {k: v[n:] for k, v in cache.items()}
    tc = guidance.GuidanceTrainConfig(steps=args.steps, batch_size=args.batch_size,
                                      latent_scale=float(settings["latent_scale"]))
    config = guidance.LatentClassifierConfig(in_channels=dit_config.in_channels,
                                             latent_size=tuple(cache["mean"].shape[2:4]),
                                             **{k: v for k, v in (("channels", args.channels),
                                                                  ("feature_dim", args.feature_dim)) if v})
    t0 = time.perf_counter()
    model, log = guidance.train_latent_classifier(train_rows, tc, diffusion_config, config)
    seconds = time.perf_counter() - t0
    accuracy = guidance.accuracy_by_time(model, held_out, latent_scale=tc.latent_scale,
                                         diffusion_config=diffusion_config, n=args.held_out)
    out = args.out or os.path.join(args.model, "guidance")
    command = "python -m sora_mini " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else ""
    fvd.export_classifier(model, out, {
        "model": "LatentClassifier (classifier guidance: the colours, shapes and motions a caption names)",
        "params": count_params(model), "train": dataclasses.asdict(tc),
        "classifier_guidance": args.scale, "clips": n, "wall_time_s": round(seconds, 1), "final_train": log[-1],
        "held_out_accuracy_by_time": {str(t): v for t, v in accuracy.items()}, "command": command})
    print(f"trained the guidance classifier in {seconds:.0f}s -> {out}; held-out accuracy by time:")
    for t, acc in accuracy.items():
        print(f"  t={t:.2f}  " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))


def cmd_evaluate(args) -> None:
    """Every measurement of chapter 09 for one pretrained model: prompt adherence (text to
    video, and image to video when the model reads frames), the world-model metrics and
    the FVD on the test and compositional splits, each beside its real-data ceiling."""
    import json

    from sora_mini import evaluate, fvd, pipeline

    model = pipeline.TextToVideo.from_pretrained(args.checkpoint)
    classifier = fvd.load_classifier(args.classifier)
    t0 = time.perf_counter()
    sampling = dict(steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                    classifier_guidance=model.classifier_guidance if args.classifier_guidance is None
                    else args.classifier_guidance,
                    low_noise_below=model.low_noise_below if args.low_noise_below is None else args.low_noise_below)
    quiet = args.json
    generate = lambda prompt, seed: model(prompt, seed=seed, **sampling)
    result = {"adherence": evaluate.evaluate_adherence(generate, args.n, "test", vae=model.vae, progress=not quiet)}
    if model.model.dit.config.frame_conditioning:
        animate = lambda prompt, seed, image: model(prompt, seed=seed, image=image, **sampling)
        result["image_to_video"] = evaluate.evaluate_adherence(animate, args.n, "test", progress=not quiet,
                                                               first_frame=True)
        result["direction_control"] = evaluate.direction_control(animate, min(args.n, 48), progress=not quiet)
    for split in args.splits:
        result[f"world_{split}"] = evaluate.evaluate_world(generate, args.n, split, vae=model.vae,
                                                           classifier=classifier, progress=not quiet)
    result["settings"] = {"checkpoint": args.checkpoint, **sampling, "n": args.n,
                          "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"prompt adherence on {args.n} test prompts (one moving object each; guidance {args.guidance}, "
          f"classifier guidance {sampling['classifier_guidance']}, low-noise expert below t = "
          f"{sampling['low_noise_below']}):")
    print(f"{'':>24}{'model':>8}{'vae':>8}{'real':>8}{'chance':>8}")
    for key in [*evaluate.CHANCE, "extra_objects_rate"]:
        row = [result["adherence"][k].get(key, float("nan")) for k in ("model", "vae", "real", "chance")]
        print(f"{key:>24}" + "".join(f"{v:8.3f}" for v in row))
    if "image_to_video" in result:
        print("image to video (first frame given), model:")
        print("".join(f"{k:>24}{v:8.3f}\n" for k, v in result["image_to_video"]["model"].items() if k != "n"), end="")
        control = result["direction_control"]
        print(f"left/right swapped in the prompt ({control['n']} clips): follows the prompt "
              f"{control['follows_prompt']:.3f}, follows the first frame {control['follows_layout']:.3f}")
    for split in args.splits:
        r = result[f"world_{split}"]
        print(f"world model on {args.n} {split} clips:")
        print(f"{'':>24}{'model':>8}{'vae':>8}{'real':>8}")
        for key in r["model"]:
            if key != "n":
                print(f"{key:>24}" + "".join(f"{r[k].get(key, float('nan')):8.3f}" for k in ("model", "vae", "real")))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sora_mini",
                                     description="sora-mini: a small Sora-style text-to-video model in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    def guide_args(p):
        p.add_argument("--classifier-guidance", type=float, help="classifier guidance scale (default: the model's, "
                       "when it ships a guidance classifier; 0: off)")
        p.add_argument("--low-noise-below", type=float, help="the time t at and below which the low-noise expert "
                       "denoises (default: the model's, when it ships one; 0: the main model throughout)")

    def world_args(p):
        p.add_argument("--preset", default="tiny", choices=sorted(data_lib.SHAPES_WORLD_PRESETS),
                       help="shapes-world preset (tiny: 17x32x32)")
        p.add_argument("--size", type=int, help="frame height and width in pixels (overrides the preset)")
        p.add_argument("--frames", type=int, help="frames per clip, 1 + k*4 (overrides the preset)")
        p.add_argument("--splits", type=_parse_sizes, default=dict(data_lib.DEFAULT_SPLIT_SIZES),
                       help="clips per split, e.g. train=10000,validation=500,test=500,compositional=500")
        p.add_argument("--num-proc", type=int, default=None, help="worker processes for generation")

    p = sub.add_parser("build-data", help="build the shapes-world dataset (HF datasets, saved to disk)")
    world_args(p)
    p.add_argument("--out", default="data/shapes_world", help="output directory")
    p.set_defaults(func=cmd_build_data)

    p = sub.add_parser("demo", help="the course's main job: a gallery of prompts turned into videos (HTML page)")
    p.add_argument("--model", default="data/pretrained/tiny", help="directory with dit/ and vae/")
    p.add_argument("--out", default="outputs", help="where the videos and index.html go")
    p.add_argument("--n", type=int, default=len(DEMO_PROMPTS), help="how many of the gallery's prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    guide_args(p)
    p.add_argument("--scale", type=int, default=4, help="upscale the written videos by this factor")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("world-grid", help="build the shapes world (if needed) and write a grid of its clips")
    world_args(p)
    p.set_defaults(splits={"train": 2000, "validation": 200, "test": 200, "compositional": 200})
    p.add_argument("--data", default="data/shapes_world", help="dataset directory (built if missing)")
    p.add_argument("--out", default="outputs", help="where the grid video and captions go")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--scale", type=int, default=3, help="upscaling of each clip in the grid")
    p.set_defaults(func=cmd_world_grid)

    p = sub.add_parser("train-vae", help="train the causal video VAE on the shapes world (resumes)")
    p.add_argument("--preset", default="tiny", help="VAE preset (tiny, small, base)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    p.add_argument("--init", help="fine-tune from this pretrained VAE (same preset) instead of a random init")
    p.add_argument("--export", help="after training, write the pretrained VAE (and its manifest) here")
    p.set_defaults(func=cmd_train_vae)

    p = sub.add_parser("encode-latents", help="encode a dataset split into a latent cache (.npz) for the DiT")
    p.add_argument("--vae", default="data/pretrained/tiny/vae", help="exported VAE or training run directory")
    p.add_argument("--data", default="data/shapes_world", help="dataset directory (build-data)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_encode_latents)

    p = sub.add_parser("train-dit", help="train the text encoder and DiT on a latent cache (resumes)")
    p.add_argument("--preset", default="tiny", help="DiT preset (tiny, small)")
    p.add_argument("--vae", default="data/pretrained/tiny/vae", help="the exported VAE the latents came from")
    p.add_argument("--latents", required=True, help="latent cache .npz (encode-latents)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    p.add_argument("--time-shift", type=float, help="SD3 time shift of training and sampling (default: the preset's)")
    p.add_argument("--unshifted-fraction", type=float,
                   help="fraction of training times drawn without the time shift (default: the preset's)")
    p.add_argument("--max-time", type=float,
                   help="draw training times only below this time t (a low-noise expert's band; default 1: all)")
    p.add_argument("--frame-conditioning", action=argparse.BooleanOptionalAction,
                   help="train the DiT to read known frames (image-to-video, extension; default: the preset's)")
    p.add_argument("--absolute-pos", action=argparse.BooleanOptionalAction,
                   help="add absolute sin-cos positions (zero-initialised projection) to RoPE's relative ones "
                   "(default: the preset's)")
    p.add_argument("--caption-loss", type=float,
                   help="weight of the text encoder's caption-attribute loss (0: off; default: the preset's)")
    p.add_argument("--output-conv", type=int,
                   help="features of U-ViT's 3x3x3 output convolution across patch borders (0: off; default: the "
                   "preset's)")
    p.add_argument("--init", help="fine-tune from this pretrained text-to-video model (e.g. data/pretrained/tiny)")
    p.add_argument("--export", help="after training, write dit/ (EMA weights, manifest) and a copy of the VAE here")
    p.add_argument("--low-noise-below", type=float,
                   help="export as the low-noise expert of the model already in --export: it takes over sampling at "
                   "times t at and below this (Wan 2.2's two experts)")
    p.set_defaults(func=cmd_train_dit)

    p = sub.add_parser("train-all", help="data, VAE, latent cache and DiT in one go, with a time estimate first")
    p.add_argument("--preset", default="tiny", choices=sorted(DIT_TRAIN_PRESETS))
    p.add_argument("--out", default=None, help="run directory for every stage (default runs/<preset>)")
    p.add_argument("--data", help="dataset directory, built if missing (default data/shapes_world for tiny, "
                   "data/shapes_world_<preset> otherwise)")
    p.add_argument("--train-clips", type=int, default=data_lib.DEFAULT_SPLIT_SIZES["train"],
                   help="training clips when the dataset is built")
    p.add_argument("--export", help="where the finished model goes (default OUT/pretrained)")
    p.add_argument("--vae-steps", type=int, help="VAE training steps (default: the VAE preset's)")
    p.add_argument("--dit-steps", type=int, help="DiT training steps (default: the DiT preset's)")
    p.add_argument("--dry-run", action="store_true", help="print the time estimate and stop")
    p.add_argument("--low-noise-expert", action=argparse.BooleanOptionalAction, default=True,
                   help="also fine-tune the preset's low-noise expert, as the shipped model has (default: yes)")
    p.add_argument("--expert-steps", type=int, help="low-noise expert fine-tuning steps (default: the preset's)")
    p.set_defaults(func=cmd_train_all)

    p = sub.add_parser("generate", help="turn a prompt into a video with a pretrained text-to-video model")
    p.add_argument("prompt")
    p.add_argument("--model", default="data/pretrained/tiny", help="directory with dit/ and vae/")
    p.add_argument("--out", default="outputs/video.mp4")
    p.add_argument("--gif", action="store_true", help="also write a .gif beside the mp4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    guide_args(p)
    p.add_argument("--sampler", default="euler", help="euler, heun, ddim or ddpm")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, help="height and width (default: the given frames', or 32)")
    p.add_argument("--scale", type=int, default=4, help="upscale the written video by this factor")
    p.add_argument("--image", help="a first frame (.png): image to video")
    p.add_argument("--video", help="a clip (.mp4/.gif, 1 + 2k frames at the model's size) to extend or edit")
    p.add_argument("--mode", choices=["extend", "extend_backward", "edit"],
                   help="what --video is: the start (extend), the end (extend_backward), or a clip to edit")
    p.add_argument("--end", help="an image or clip the video must end with (with --image/--video: interpolation)")
    p.add_argument("--mask", help="with --video of the whole length: latent frames to keep, e.g. 100010001")
    p.add_argument("--strength", type=float, help="editing: how far to noise --video (0 keeps it, 1 ignores it)")
    p.add_argument("--long", action="store_true", help="--frames beyond the training length, by overlapping windows")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train-classifier", help="train the shapes-world video classifier whose features FVD uses")
    p.add_argument("--out", default="data/pretrained/classifier")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("train-guidance", help="train the noisy-latent classifier for classifier guidance")
    p.add_argument("--model", default="data/pretrained/tiny", help="the pretrained model it will guide")
    p.add_argument("--latents", required=True, help="latent cache .npz made with the model's VAE (encode-latents)")
    p.add_argument("--out", help="where it goes (default MODEL/guidance, which from_pretrained loads)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--held-out", type=int, default=500, help="last clips of the cache kept out, to measure it")
    p.add_argument("--channels", type=lambda s: tuple(int(c) for c in s.split(",")),
                   help="the classifier's two convolution widths (default 32,64)")
    p.add_argument("--feature-dim", type=int, help="the classifier's feature width (default 128)")
    p.add_argument("--scale", type=float, default=0.0,
                   help="the classifier guidance scale the model then samples with by default (0: off)")
    p.set_defaults(func=cmd_train_guidance)

    p = sub.add_parser("evaluate", help="measure a pretrained model against the shapes world's ground truth")
    p.add_argument("--checkpoint", default="data/pretrained/tiny", help="directory with dit/ and vae/")
    p.add_argument("--n", type=int, default=128, help="number of prompts")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    guide_args(p)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--classifier", default="data/pretrained/classifier", help="the video classifier FVD uses")
    p.add_argument("--splits", nargs="+", default=["test", "compositional"], help="splits for the world metrics")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    if args.command == "train-all":
        args.out = args.out or os.path.join("runs", args.preset)
        args.data = args.data or ("data/shapes_world" if args.preset == "tiny" else f"data/shapes_world_{args.preset}")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
