"""The course's end-to-end jobs as plain functions: what each `python -m sora_mini`
subcommand does, callable from a notebook or a script as well.

`train_all` chains them: shapes world -> VAE -> latent cache -> DiT (-> its low-noise
expert, where the preset has one) -> a model `generate` and `demo` can use. Each function
takes typed arguments (None: the preset's or the default value) and `command`, the command
line recorded in a manifest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from flax import nnx

from sora_mini import dataset, evaluate, export, fvd, guidance, loop, parallel, store, train
from sora_mini import video as video_lib
from sora_mini.model import TextToVideoModel, configs_from_settings, init_from_pretrained
from sora_mini.pipeline import TextToVideo
from sora_mini.presets import (ASSUMED_MFU, COLAB_DEVICES, DEMO_PROMPTS, DIT_TRAIN_PRESETS, REFERENCE_GFLOPS,
                               VAE_TRAIN_PRESETS, dit_preset_configs, dit_train_minutes)
from sora_mini.vae import VAE_PRESETS, VideoVAE
from sora_mini.world import SHAPES_WORLD_PRESETS, ShapesWorldConfig

# ----------------------------------------------------------------------------------------
# Chapter 01: the shapes world.


def build_data(world: ShapesWorldConfig, out: str, splits: dict[str, int], num_proc: int | None = None):
    """Build the shapes-world dataset (Hugging Face `datasets`, saved to `out`)."""
    t0 = time.perf_counter()
    dd = dataset.build_dataset(world, out, splits, num_proc=num_proc)
    n = sum(len(d) for d in dd.values())
    print(f"built {n} clips ({', '.join(f'{k}={len(v)}' for k, v in dd.items())}) of "
          f"{world.num_frames}x{world.height}x{world.width} in {time.perf_counter() - t0:.1f}s -> {out}")
    return dd


def check_saved_world(path: str, world: ShapesWorldConfig) -> None:
    """Raise if the dataset at `path` was built from another world than `world`."""
    saved = dataclasses.asdict(dataset.load_config(path))
    differ = sorted(k for k, v in dataclasses.asdict(world).items() if saved[k] != v)
    if differ:
        raise ValueError(f"{path} holds a shapes world other than the one asked for (it differs in "
                         f"{', '.join(differ)}); pass another --data, or delete it to rebuild")


def has_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "shapes_world_config.json"))


def world_grid(world: ShapesWorldConfig, data: str, out: str, splits: dict[str, int], *, rows: int = 4,
               cols: int = 4, scale: int = 3, num_proc: int | None = None) -> None:
    """Build the shapes world into `data` if needed and write a grid of its clips and their captions."""
    if not has_dataset(data):
        print(f"building the shapes world into {data} ...")
        build_data(world, data, splits, num_proc)
    else:
        check_saved_world(data, world)
    clips = dataset.load_shapes_world(data, "train")[: rows * cols]
    videos = [v.astype("uint8") for v in clips["video"]]
    grid = video_lib.video_grid([video_lib.upscale(v, scale) for v in videos], cols=cols)
    os.makedirs(out, exist_ok=True)
    mp4 = video_lib.write_video(os.path.join(out, "shapes_world_grid.mp4"), grid, fps=world.fps)
    gif = video_lib.write_video(os.path.join(out, "shapes_world_grid.gif"), grid, fps=world.fps)
    captions = os.path.join(out, "captions.txt")
    with open(captions, "w") as f:
        for i, caption in enumerate(clips["caption"]):
            r, c = divmod(i, cols)
            f.write(f"row {r + 1}, col {c + 1}: {caption}\n")
    print(open(captions).read(), end="")
    print(f"\nwrote {mp4}\n      {gif}\n      {captions}")


# ----------------------------------------------------------------------------------------
# Chapters 02 and 06: training and exporting.


def train_vae(preset: str, out: str, *, steps: int | None = None, batch_size: int | None = None,
              lr: float | None = None, init: str | None = None, export_to: str | None = None,
              command: str = "") -> VideoVAE:
    """Train (or resume) a VAE preset in run directory `out`; export it to `export_to`."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r}; expected one of {sorted(VAE_PRESETS)}")
    p = VAE_TRAIN_PRESETS[preset]
    tc = train.VAETrainConfig(steps=steps or p.steps, batch_size=batch_size or p.batch_size,
                              num_frames=p.num_frames, crop_size=p.crop_size, warmup_steps=p.warmup_steps,
                              save_every=p.save_every, learning_rate=lr or p.learning_rate)
    world = SHAPES_WORLD_PRESETS[p.world]
    model = train.train_vae(VAE_PRESETS[preset], tc, out, world, init_from=init)
    if export_to:
        export.export_vae(model, export_to, run_dir=out, world=world,
                          extra={"command": command, "train": dataclasses.asdict(tc)})
        print(f"exported the VAE to {export_to}")
    return model


def encode_latents(vae: str, data: str, out: str, *, split: str = "train", batch_size: int = 32) -> str:
    """Encode a dataset split with the VAE in `vae` into a latent cache `.npz`; returns its path."""
    model = VideoVAE.from_pretrained(vae)
    ds = dataset.load_shapes_world(data, split)
    t0 = time.perf_counter()
    cache = train.encode_dataset(model, ds, batch_size)
    out = out if out.endswith(".npz") else out + ".npz"  # np.savez would add it silently; say the real name
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **cache)
    print(f"encoded {len(ds)} clips of {split} to latents {cache['mean'].shape[1:]} in "
          f"{time.perf_counter() - t0:.1f}s -> {out}")
    return out


def read_vae_latent_scale(vae: str, channels: int, preset: str) -> float:
    """The latent scale the exported VAE in `vae` measured, checking it makes `channels` channels."""
    manifest_path = os.path.join(vae, "manifest.json")
    if not os.path.exists(manifest_path):
        raise FileNotFoundError(f"no exported VAE manifest at {manifest_path}: the DiT needs its latent_scale "
                                "(python -m sora_mini train-vae ... --export DIR)")
    manifest = store.read_json(manifest_path)
    if manifest["config"]["latent_channels"] != channels:
        raise ValueError(f"the VAE in {vae} makes {manifest['config']['latent_channels']} latent channels; "
                         f"the {preset} DiT reads {channels}")
    return float(manifest["metrics"]["latent_scale"])


def load_latents(path: str, channels: int, what: str, hint: str) -> dict:
    """A latent cache `.npz` as a dict of arrays, checking its latents have `channels` channels."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no latent cache at {path}: {hint}")
    cache = dict(np.load(path))
    if cache["mean"].shape[-1] != channels:
        raise ValueError(f"the latents have {cache['mean'].shape[-1]} channels, {what} {channels}")
    return cache


def train_dit(preset: str, vae: str, latents: str, out: str, *, steps: int | None = None,
              batch_size: int | None = None, lr: float | None = None, time_shift: float | None = None,
              unshifted_fraction: float | None = None, max_time: float | None = None,
              frame_conditioning: bool | None = None, absolute_pos: bool | None = None,
              caption_loss: float | None = None, output_conv: int | None = None, init: str | None = None,
              export_to: str | None = None, low_noise_below: float | None = None, precision: str | None = None,
              mesh: str = "", coordinator: str | None = None, num_processes: int = 1, process_id: int = 0,
              command: str = "") -> None:
    """Train (or resume) the text encoder and DiT of a preset on a latent cache; export the
    model (or, with `low_noise_below`, a low-noise expert of the model in `export_to`).
    `precision` (default: the preset's) and `mesh` (`"data=2,fsdp=4"`) choose mixed
    precision and FSDP (`parallel`); with a `coordinator`, this is process `process_id` of
    `num_processes`, each started with the same arguments on its own host. A many-process
    run does not export: rerun the same command as one process with `--export` (it finds
    the run finished, restores it onto its own devices and exports)."""
    mesh_shape = parallel.MeshShape.parse(mesh)
    if export_to and (num_processes > 1 or coordinator == "auto"):
        raise ValueError("--export needs one process: train on many, then rerun the same command as one process "
                         "with --export (it resumes the finished run and exports it)")
    # A shipped model's name is recorded as given (a path moves with the install), loaded by path.
    named = {"vae": vae if store.is_pretrained_name(vae) else os.path.abspath(vae),
             "init": init if not init or store.is_pretrained_name(init) else os.path.abspath(init)}
    vae = store.resolve_pretrained(vae, "vae", what="VAE") if store.is_pretrained_name(vae) else vae
    init = store.resolve_pretrained(init) if init and store.is_pretrained_name(init) else init
    parallel.initialize(coordinator, num_processes, process_id)  # before anything touches a device
    text_config, dit_config, diffusion_config, caption_loss = dit_preset_configs(
        preset, frame_conditioning=frame_conditioning, absolute_pos=absolute_pos, time_shift=time_shift,
        unshifted_fraction=unshifted_fraction, caption_loss=caption_loss, output_conv=output_conv,
        max_time=max_time)
    p = DIT_TRAIN_PRESETS[preset]
    batch = batch_size or p.batch_size
    devices = parallel.make_mesh(mesh_shape).size  # the mesh must fit the devices: checked before any work
    if batch % devices:
        raise ValueError(f"batch size {batch} must divide by the {devices} devices of the mesh")
    latent_scale = read_vae_latent_scale(vae, dit_config.in_channels, preset)
    cache = load_latents(latents, dit_config.in_channels, f"the {preset} DiT expects",
                         f"make one with python -m sora_mini encode-latents --vae {vae} --out {latents}")
    tc = train.DiTTrainConfig(steps=steps or p.steps, batch_size=batch, learning_rate=lr or p.learning_rate,
                              latent_scale=latent_scale, caption_loss=caption_loss, precision=precision)
    settings = {"text": dataclasses.asdict(text_config), "dit": dataclasses.asdict(dit_config),
                "latents": os.path.abspath(latents), **named}
    model = TextToVideoModel(text_config, dit_config, rngs=nnx.Rngs(tc.seed))
    init_manifest = os.path.join(out, "init_manifest.json")
    if init and not os.path.exists(os.path.join(out, "checkpoints")):
        # Read (and keep) the manifest now: the export at the end may overwrite `init`.
        manifest = init_from_pretrained(model, init)
        if parallel.is_main_process():
            os.makedirs(out, exist_ok=True)
            store.write_json(init_manifest, manifest)
        print(f"initialised from the pretrained model in {init}")
    train.train_dit(model, cache, tc, out, diffusion_config, settings=settings, mesh=mesh_shape)
    print(f"trained the DiT: {out}")
    if export_to:
        extra = {"command": command}
        if os.path.exists(init_manifest):  # a fine-tune: record the stage it started from
            extra["init"] = store.read_json(init_manifest)
        export.export_text_to_video(out, export_to, vae, extra=extra, low_noise_below=low_noise_below)
        print(f"exported the text-to-video model (EMA weights + VAE) to {export_to}" if low_noise_below is None
              else f"exported the low-noise expert (t <= {low_noise_below:g}) to {export_to}/low_noise")


def exported_steps(path: str) -> int | None:
    """The steps the export (VAE or DiT) in `path` trained for, or None when there is none."""
    manifest = os.path.join(path, "manifest.json")
    return store.read_json(manifest).get("steps") if os.path.exists(manifest) else None


def train_all(preset: str, out: str | None = None, data: str | None = None, *,
              train_clips: int = dataset.DEFAULT_SPLIT_SIZES["train"],
              export_to: str | None = None, vae_steps: int | None = None, dit_steps: int | None = None,
              dry_run: bool = False, low_noise_expert: bool = True, expert_steps: int | None = None) -> str:
    """Shapes world -> VAE -> latent cache -> DiT (-> its low-noise expert, where the preset
    has one), with a time estimate first. Every stage resumes or is skipped when its output
    exists, so rerunning continues. `out` defaults to runs/PRESET, `data` to
    data/shapes_world (tiny) or data/shapes_world_PRESET. Returns the export directory."""
    p = DIT_TRAIN_PRESETS[preset]
    out = out or os.path.join("runs", preset)
    data = data or ("data/shapes_world" if preset == "tiny" else f"data/shapes_world_{preset}")
    vae_steps = vae_steps or VAE_TRAIN_PRESETS[preset].steps
    dit_steps = dit_steps or p.steps
    export_to = export_to or os.path.join(out, "pretrained")
    expert = p.low_noise_expert if low_noise_expert else None
    expert_steps = (expert_steps or expert.steps) if expert else 0
    world = SHAPES_WORLD_PRESETS[VAE_TRAIN_PRESETS[preset].world]
    has_data = has_dataset(data)
    if has_data:
        check_saved_world(data, world)
    splits = {k: min(v, train_clips) for k, v in dataset.DEFAULT_SPLIT_SIZES.items()}
    clips = len(dataset.load_shapes_world(data, "train")) if has_data else splits["train"]
    if p.cost is not None:
        gflops = loop.matmul_gflops(1024, repeats=5) / 1e9
        scale, c = REFERENCE_GFLOPS / gflops, p.cost
        stages = [("build the shapes world", 0.0 if has_data else c.build_data_s * clips / 10_000),
                  (f"train the VAE, {vae_steps} steps", vae_steps * c.vae_step_s),
                  (f"encode {clips} clips to latents", clips * c.encode_clip_s),
                  (f"train the DiT, {dit_steps} steps", dit_steps * c.dit_step_s)]
        if expert:
            stages.append((f"fine-tune a low-noise expert, {expert_steps} steps", expert_steps * c.expert_step_s))
        print(f"train-all --preset {preset}: this machine does {gflops:.0f} GFLOP/s on a float32 matmul (the "
              f"reference CPU {REFERENCE_GFLOPS:.0f}); estimated time (finished stages are skipped):")
        for name, seconds in stages:
            print(f"  {name:<40} {seconds * scale / 60:6.1f} min")
        print(f"  {'total':<40} {sum(s for _, s in stages) * scale / 60:6.1f} min\n", flush=True)
    else:
        print(f"train-all --preset {preset}: sized for a GPU/TPU and not yet timed on one; {vae_steps} VAE steps, "
              f"{dit_steps} DiT steps{f' and {expert_steps} expert steps' if expert else ''}. Estimated DiT "
              f"training from its FLOPs at an assumed {ASSUMED_MFU:.0%} MFU (an estimate, not a measurement):")
        for name in COLAB_DEVICES:
            peak = parallel.DATASHEET_PEAKS[name]
            minutes = dit_train_minutes(preset, peak, steps=dit_steps)
            print(f"  {name:<12} {peak / 1e12:5.0f} TFLOP/s  {minutes:6.1f} min")
        print(flush=True)
    if dry_run:
        return export_to

    if not has_data:
        build_data(world, data, splits)
    vae_dir = os.path.join(export_to, "vae")
    if exported_steps(vae_dir) != vae_steps:
        train_vae(preset, os.path.join(out, "vae"), steps=vae_steps, export_to=vae_dir)
    latents = os.path.join(out, "latents.npz")
    if not os.path.exists(latents):
        encode_latents(vae_dir, data, latents)
    if exported_steps(os.path.join(export_to, "dit")) != dit_steps:
        train_dit(preset, vae_dir, latents, os.path.join(out, "dit"), steps=dit_steps, export_to=export_to)
    if expert and exported_steps(os.path.join(export_to, "low_noise")) != expert_steps:
        # Fine-tuned from the main DiT just exported, on its own band of times only.
        train_dit(preset, vae_dir, latents, os.path.join(out, "dit_low_noise"), steps=expert_steps,
                  lr=expert.learning_rate, init=export_to, time_shift=expert.time_shift, max_time=expert.max_time,
                  output_conv=expert.output_conv, export_to=export_to, low_noise_below=expert.below)
    print(f"done: python -m sora_mini generate \"a red circle moves to the right\" --model {export_to}")
    return export_to


# ----------------------------------------------------------------------------------------
# Chapters 07-08: using the model.


def generate(prompt: str, model: str, out: str, *, gif: bool = False, scale: int = 4, image: str | None = None,
             video: str | None = None, end: str | None = None, long: bool = False, mask: str | None = None,
             num_frames: int = 17, size: int | None = None, **sampling) -> np.ndarray:
    """Turn `prompt` into a video with the model in `model` and write it to `out` (.mp4).
    `image`, `video`, `end`: files of frames to start from, extend, edit or end with;
    `mask`: latent frames of `video` to keep, e.g. "100010001"; `sampling`: the keywords of
    `TextToVideo.__call__` (seed, steps, guidance, sampler, mode, strength, ...)."""
    t0 = time.perf_counter()
    pipe = TextToVideo.from_pretrained(model)
    t1 = time.perf_counter()
    frames_in = {}
    for name, path in (("image", image), ("video", video), ("end", end)):
        if path:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--{name} {path}: no such file")
            frames_in[name] = (video_lib.read_image(path) if name == "image" or not path.endswith((".mp4", ".gif"))
                               else video_lib.read_video(path))
    if long:
        sampling = {k: v for k, v in sampling.items() if k not in ("mode", "strength")}
        clip = pipe.long_video(prompt, num_frames, height=size, width=size, **sampling)
    else:
        keep = None if mask is None else [c == "1" for c in mask]
        clip = pipe(prompt, num_frames=num_frames, height=size, width=size, mask=keep, **sampling, **frames_in)
    t2 = time.perf_counter()
    frames = video_lib.upscale(clip, scale) if scale > 1 else clip
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    video_lib.write_video(out, frames)
    if gif:
        video_lib.write_video(os.path.splitext(out)[0] + ".gif", frames)
    print(f"{prompt!r} -> {out} ({clip.shape[0]} frames of {clip.shape[1]}x{clip.shape[2]}; "
          f"load {t1 - t0:.1f}s, compile + sample {t2 - t1:.1f}s)")
    return clip


def demo(model: str, out: str, *, n: int = len(DEMO_PROMPTS), seed: int = 0, scale: int = 4, **sampling) -> str:
    """The course's main job: a gallery of prompts turned into videos, with what the
    shapes-world detector reads back from each, on an HTML page. Returns the page's path."""
    t0 = time.perf_counter()
    pipe = TextToVideo.from_pretrained(model)
    prompts = DEMO_PROMPTS[:n]
    videos = [pipe(p, seed=seed + i, **sampling) for i, p in enumerate(prompts)]
    notes = []
    for v in videos:
        found = evaluate.detect(v)
        objects = ", ".join(f"{o.color} {o.shape} {o.direction()}" for o in found.objects[:3]) or "nothing"
        notes.append(f"detector reads: {objects} on {found.background}")
    page = video_lib.write_gallery(out, videos, prompts, notes=notes, scale=scale,
                                   title=f"sora-mini: {len(prompts)} prompts, {model}")
    for prompt, note in zip(prompts, notes):
        print(f"{prompt!r}\n    {note}")
    print(f"\n{len(prompts)} videos in {time.perf_counter() - t0:.1f}s (load, compile, sample, write)")
    print(f"open {os.path.abspath(page)}")
    return page


# ----------------------------------------------------------------------------------------
# Chapters 07 and 09: the classifiers.


def train_fvd_classifier(out: str, *, steps: int = 1500, batch_size: int = 32, command: str = "") -> dict:
    """Train and export the shapes-world video classifier whose features FVD uses."""
    t0 = time.perf_counter()
    tc = fvd.ClassifierTrainConfig(steps=steps, batch_size=batch_size)
    model = fvd.train_classifier(tc)
    seconds = time.perf_counter() - t0
    accuracy = fvd.classifier_accuracy(model, n=512, split="test")
    export.export_classifier(model, out, {"model": "VideoClassifier (features for the shapes world's FVD)",
                                          "steps": steps, "batch_size": batch_size,
                                          "wall_time_s": round(seconds, 1), "test_accuracy": accuracy,
                                          "command": command})
    print(f"trained the video classifier in {seconds:.0f}s; test accuracy "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) + f" -> {out}")
    return accuracy


def train_guidance(model: str, latents: str, *, out: str | None = None, steps: int = 2000, batch_size: int = 64,
                   held_out: int = 500, channels: tuple[int, int] | None = None, feature_dim: int | None = None,
                   scale: float = 0.0, command: str = "") -> dict:
    """The classifier of noisy latents that classifier guidance steers a pretrained model
    with, trained on the model's own latent space and time grid; the last `held_out`
    clips of the cache are kept out to measure it. Returns its held-out accuracy by time.
    `out` defaults to `model/guidance` for a directory, `runs/guidance` for a shipped name."""
    default_out = "runs/guidance" if store.is_pretrained_name(model) else os.path.join(model, "guidance")
    model = store.resolve_pretrained(model) if store.is_pretrained_name(model) else model
    settings_path = os.path.join(model, "dit", "config.json")
    if not os.path.exists(settings_path):
        raise FileNotFoundError(f"no pretrained text-to-video model at {model} (expected dit/config.json)")
    settings = store.read_json(settings_path)
    _, dit_config, diffusion_config = configs_from_settings(settings)
    cache = load_latents(latents, dit_config.in_channels, "the model's",
                         "make one with `python -m sora_mini encode-latents`")
    n = len(cache["mean"]) - held_out
    if n < batch_size:
        raise ValueError(f"{len(cache['mean'])} clips leave {n} to train on after --held-out {held_out}")
    train_rows = {k: v[:n] for k, v in cache.items()}
    kept_out = {k: v[n:] for k, v in cache.items()}
    tc = guidance.GuidanceTrainConfig(steps=steps, batch_size=batch_size, latent_scale=float(settings["latent_scale"]))
    config = guidance.LatentClassifierConfig(in_channels=dit_config.in_channels,
                                             latent_size=tuple(cache["mean"].shape[2:4]),
                                             **{k: v for k, v in (("channels", channels),
                                                                  ("feature_dim", feature_dim)) if v})
    t0 = time.perf_counter()
    classifier, log = guidance.train_latent_classifier(train_rows, tc, diffusion_config, config)
    seconds = time.perf_counter() - t0
    accuracy = guidance.accuracy_by_time(classifier, kept_out, latent_scale=tc.latent_scale,
                                         diffusion_config=diffusion_config, n=held_out)
    out = out or default_out
    export.export_classifier(classifier, out, {
        "model": "LatentClassifier (classifier guidance: the colours, shapes and motions a caption names)",
        "params": store.count_params(classifier), "train": dataclasses.asdict(tc),
        "classifier_guidance": scale, "clips": n, "wall_time_s": round(seconds, 1), "final_train": log[-1],
        "held_out_accuracy_by_time": {str(t): v for t, v in accuracy.items()}, "command": command})
    print(f"trained the guidance classifier in {seconds:.0f}s -> {out}; held-out accuracy by time:")
    for t, acc in accuracy.items():
        print(f"  t={t:.2f}  " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    return accuracy


# ----------------------------------------------------------------------------------------
# Chapter 09: every measurement of one pretrained model.


def evaluate_model(checkpoint: str, classifier: str, *, n: int = 128, splits=("test", "compositional"),
                   as_json: bool = False, classifier_guidance: float | None = None,
                   low_noise_below: float | None = None, **sampling) -> dict:
    """Prompt adherence (text to video, and image to video when the model reads frames),
    the world-model metrics and the FVD on `splits`, each beside its real-data ceiling;
    printed as tables, or `as_json` (then without progress bars). Returns the result."""
    progress = not as_json
    pipe = TextToVideo.from_pretrained(checkpoint)
    fvd_classifier = fvd.load_classifier(classifier)
    t0 = time.perf_counter()
    sampling = dict(sampling, classifier_guidance=pipe.classifier_guidance if classifier_guidance is None
                    else classifier_guidance,
                    low_noise_below=pipe.low_noise_below if low_noise_below is None else low_noise_below)
    generate = lambda prompt, seed: pipe(prompt, seed=seed, **sampling)
    result = {"adherence": evaluate.evaluate_adherence(generate, n, "test", vae=pipe.vae, progress=progress)}
    if pipe.model.dit.config.frame_conditioning:
        animate = lambda prompt, seed, image: pipe(prompt, seed=seed, image=image, **sampling)
        result["image_to_video"] = evaluate.evaluate_adherence(animate, n, "test", progress=progress,
                                                               first_frame=True)
        result["direction_control"] = evaluate.direction_control(animate, min(n, 48), progress=progress)
    for split in splits:
        result[f"world_{split}"] = evaluate.evaluate_world(generate, n, split, vae=pipe.vae, classifier=fvd_classifier,
                                                           progress=progress)
    result["settings"] = {"checkpoint": checkpoint, **sampling, "n": n, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=2)) if as_json else print_evaluation(result)
    return result


def print_evaluation(result: dict) -> None:
    """`evaluate_model`'s result as tables."""
    s = result["settings"]
    print(f"prompt adherence on {s['n']} test prompts (one moving object each; guidance {s['guidance']}, "
          f"classifier guidance {s['classifier_guidance']}, low-noise expert below t = {s['low_noise_below']}):")
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
    for key in (k for k in result if k.startswith("world_")):
        r = result[key]
        print(f"world model on {s['n']} {key[len('world_'):]} clips:")
        print(f"{'':>24}{'model':>8}{'vae':>8}{'real':>8}")
        for metric in (m for m in r["model"] if m != "n"):
            print(f"{metric:>24}" + "".join(f"{r[k].get(metric, float('nan')):8.3f}" for k in ("model", "vae", "real")))
