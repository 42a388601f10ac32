"""The sora-mini command line: `python -m sora_mini --help`.

It only parses arguments: each subcommand calls one function of `sora_mini.recipes`,
which a notebook or a script can call as well."""

from __future__ import annotations

import argparse
import sys

from sora_mini import recipes
from sora_mini.dataset import DEFAULT_SPLIT_SIZES, SPLIT_SEED_OFFSETS
from sora_mini.parallel import PRECISIONS
from sora_mini.presets import DEMO_PROMPTS, DIT_TRAIN_PRESETS
from sora_mini.world import SHAPES_WORLD_PRESETS


def _world(args):
    config = SHAPES_WORLD_PRESETS[args.preset]
    changes = {k: v for k, v in (("height", args.size), ("width", args.size), ("num_frames", args.frames))
               if v is not None}
    return config.replace(**changes)


def _parse_sizes(text: str) -> dict[str, int]:
    sizes = {}
    for part in text.split(","):
        name, _, n = part.partition("=")
        if name not in SPLIT_SEED_OFFSETS or not n.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected SPLIT=N[,SPLIT=N...] with splits from {list(SPLIT_SEED_OFFSETS)}, got {part!r}")
        sizes[name] = int(n)
    return sizes


def _command() -> str:
    """The command line as a manifest records it (empty when not run as `python -m sora_mini`)."""
    return "python -m sora_mini " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else ""


def _sampling(args) -> dict:
    return dict(steps=args.steps, guidance=args.guidance, classifier_guidance=args.classifier_guidance,
                low_noise_below=args.low_noise_below)


COMMANDS = {
    "build-data": lambda a: recipes.build_data(_world(a), a.out, a.splits, a.num_proc),
    "demo": lambda a: recipes.demo(a.model, a.out, n=a.n, seed=a.seed, scale=a.scale, **_sampling(a)),
    "world-grid": lambda a: recipes.world_grid(_world(a), a.data, a.out, a.splits, rows=a.rows, cols=a.cols,
                                               scale=a.scale, num_proc=a.num_proc),
    "train-vae": lambda a: recipes.train_vae(a.preset, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                             init=a.init, export_to=a.export, command=_command()),
    "encode-latents": lambda a: recipes.encode_latents(a.vae, a.data, a.out, split=a.split, batch_size=a.batch_size),
    "train-dit": lambda a: recipes.train_dit(
        a.preset, a.vae, a.latents, a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, time_shift=a.time_shift,
        unshifted_fraction=a.unshifted_fraction, max_time=a.max_time, frame_conditioning=a.frame_conditioning,
        absolute_pos=a.absolute_pos, caption_loss=a.caption_loss, output_conv=a.output_conv, init=a.init,
        export_to=a.export, low_noise_below=a.low_noise_below, precision=a.precision, mesh=a.mesh,
        coordinator=a.coordinator, num_processes=a.num_processes, process_id=a.process_id, command=_command()),
    "train-all": lambda a: recipes.train_all(
        a.preset, a.out, a.data, train_clips=a.train_clips, export_to=a.export, vae_steps=a.vae_steps,
        dit_steps=a.dit_steps, dry_run=a.dry_run, low_noise_expert=a.low_noise_expert, expert_steps=a.expert_steps),
    "generate": lambda a: recipes.generate(
        a.prompt, a.model, a.out, gif=a.gif, scale=a.scale, image=a.image, video=a.video, end=a.end, long=a.long,
        mask=a.mask, num_frames=a.frames, size=a.size, seed=a.seed, sampler=a.sampler, mode=a.mode,
        strength=a.strength, **_sampling(a)),
    "train-fvd-classifier": lambda a: recipes.train_fvd_classifier(a.out, steps=a.steps, batch_size=a.batch_size,
                                                                   command=_command()),
    "train-guidance": lambda a: recipes.train_guidance(
        a.model, a.latents, out=a.out, steps=a.steps, batch_size=a.batch_size, held_out=a.held_out,
        channels=a.channels, feature_dim=a.feature_dim, scale=a.scale, command=_command()),
    "evaluate": lambda a: recipes.evaluate_model(a.checkpoint, a.classifier, n=a.n, splits=a.splits,
                                                 as_json=a.json, sampler=a.sampler, **_sampling(a)),
}


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
        p.add_argument("--preset", default="tiny", choices=sorted(SHAPES_WORLD_PRESETS),
                       help="shapes-world preset (tiny: 17x32x32)")
        p.add_argument("--size", type=int, help="frame height and width in pixels (overrides the preset)")
        p.add_argument("--frames", type=int, help="frames per clip, 1 + k*4 (overrides the preset)")
        p.add_argument("--splits", type=_parse_sizes, default=dict(DEFAULT_SPLIT_SIZES),
                       help="clips per split, e.g. train=10000,validation=500,test=500,compositional=500")
        p.add_argument("--num-proc", type=int, default=None, help="worker processes for generation")

    p = sub.add_parser("build-data", help="build the shapes-world dataset (HF datasets, saved to disk)")
    world_args(p)
    p.add_argument("--out", default="data/shapes_world", help="output directory")

    p = sub.add_parser("demo", help="the course's main job: a gallery of prompts turned into videos (HTML page)")
    p.add_argument("--model", default="tiny", help="a shipped model's name, or a directory with dit/ and vae/")
    p.add_argument("--out", default="outputs", help="where the videos and index.html go")
    p.add_argument("--n", type=int, default=len(DEMO_PROMPTS), help="how many of the gallery's prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    guide_args(p)
    p.add_argument("--scale", type=int, default=4, help="upscale the written videos by this factor")

    p = sub.add_parser("world-grid", help="build the shapes world (if needed) and write a grid of its clips")
    world_args(p)
    p.set_defaults(splits={"train": 2000, "validation": 200, "test": 200, "compositional": 200})
    p.add_argument("--data", default="data/shapes_world", help="dataset directory (built if missing)")
    p.add_argument("--out", default="outputs", help="where the grid video and captions go")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--scale", type=int, default=3, help="upscaling of each clip in the grid")

    p = sub.add_parser("train-vae", help="train the causal video VAE on the shapes world (resumes)")
    p.add_argument("--preset", default="tiny", help="VAE preset (tiny, small, base)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    p.add_argument("--init", help="fine-tune from this pretrained VAE (same preset) instead of a random init")
    p.add_argument("--export", help="after training, write the pretrained VAE (and its manifest) here")

    p = sub.add_parser("encode-latents", help="encode a dataset split into a latent cache (.npz) for the DiT")
    p.add_argument("--vae", default="tiny", help="a shipped model's name (its VAE), an exported VAE or a training "
                   "run directory")
    p.add_argument("--data", default="data/shapes_world", help="dataset directory (build-data)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser("train-dit", help="train the text encoder and DiT on a latent cache (resumes)")
    p.add_argument("--preset", default="tiny", help="DiT preset (tiny, small)")
    p.add_argument("--vae", default="tiny", help="the exported VAE the latents came from (or a shipped model's name)")
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
    p.add_argument("--init", help="fine-tune from this pretrained text-to-video model (a directory, or a name: tiny)")
    p.add_argument("--export", help="after training, write dit/ (EMA weights, manifest) and a copy of the VAE here")
    p.add_argument("--low-noise-below", type=float,
                   help="export as the low-noise expert of the model already in --export: it takes over sampling at "
                   "times t at and below this (Wan 2.2's two experts)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="compute dtype of training (bfloat16: mixed precision, float32 weights and AdamW; default: "
                   "the preset's)")
    p.add_argument("--mesh", default="", help="device mesh, e.g. data=2,fsdp=4: the batch over both axes, "
                   "weights and optimizer state over fsdp (default: data parallel over every device)")
    p.add_argument("--coordinator", help="HOST:PORT of process 0, to train on many hosts (jax.distributed); auto: "
                   "found by JAX on a Cloud TPU pod slice, under SLURM or Open MPI")
    p.add_argument("--num-processes", type=int, default=1, help="processes (hosts) in a many-host run")
    p.add_argument("--process-id", type=int, default=0, help="this process's number, 0..num-processes-1")

    p = sub.add_parser("train-all", help="data, VAE, latent cache and DiT in one go, with a time estimate first")
    p.add_argument("--preset", default="tiny", choices=sorted(DIT_TRAIN_PRESETS))
    p.add_argument("--out", default=None, help="run directory for every stage (default runs/<preset>)")
    p.add_argument("--data", help="dataset directory, built if missing (default data/shapes_world for tiny, "
                   "data/shapes_world_<preset> otherwise)")
    p.add_argument("--train-clips", type=int, default=DEFAULT_SPLIT_SIZES["train"],
                   help="training clips when the dataset is built")
    p.add_argument("--export", help="where the finished model goes (default OUT/pretrained)")
    p.add_argument("--vae-steps", type=int, help="VAE training steps (default: the VAE preset's)")
    p.add_argument("--dit-steps", type=int, help="DiT training steps (default: the DiT preset's)")
    p.add_argument("--dry-run", action="store_true", help="print the time estimate and stop")
    p.add_argument("--low-noise-expert", action=argparse.BooleanOptionalAction, default=True,
                   help="also fine-tune the preset's low-noise expert, as the shipped model has (default: yes)")
    p.add_argument("--expert-steps", type=int, help="low-noise expert fine-tuning steps (default: the preset's)")

    p = sub.add_parser("generate", help="turn a prompt into a video with a pretrained text-to-video model")
    p.add_argument("prompt")
    p.add_argument("--model", default="tiny", help="a shipped model's name, or a directory with dit/ and vae/")
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

    p = sub.add_parser("train-fvd-classifier", help="train the shapes-world video classifier whose features FVD uses")
    p.add_argument("--out", default="runs/classifier", help="where it goes (evaluate --classifier reads it)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser("train-guidance", help="train the noisy-latent classifier for classifier guidance")
    p.add_argument("--model", default="tiny", help="the pretrained model it will guide (a name or a directory)")
    p.add_argument("--latents", required=True, help="latent cache .npz made with the model's VAE (encode-latents)")
    p.add_argument("--out", help="where it goes (default MODEL/guidance, which from_pretrained loads; runs/guidance "
                   "for a shipped model's name)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--held-out", type=int, default=500, help="last clips of the cache kept out, to measure it")
    p.add_argument("--channels", type=lambda s: tuple(int(c) for c in s.split(",")),
                   help="the classifier's two convolution widths (default 32,64)")
    p.add_argument("--feature-dim", type=int, help="the classifier's feature width (default 128)")
    p.add_argument("--scale", type=float, default=0.0,
                   help="the classifier guidance scale the model then samples with by default (0: off)")

    p = sub.add_parser("evaluate", help="measure a pretrained model against the shapes world's ground truth")
    p.add_argument("--checkpoint", default="tiny", help="a shipped model's name, or a directory with dit/ and vae/")
    p.add_argument("--n", type=int, default=128, help="number of prompts")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=4.0)
    guide_args(p)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--classifier", default="classifier", help="the video classifier FVD uses (a name or a "
                   "directory)")
    p.add_argument("--splits", nargs="+", default=["test", "compositional"], help="splits for the world metrics")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
