"""Training presets: what `train-vae`, `train-dit` and `train-all` run, as typed configs.

Each preset's docstring gives its launch command; its `cost` holds what one unit of each
stage took on the reference machine (the course's 2-core CPU, whose float32 matmul peaks
near `REFERENCE_GFLOPS`), measured by the benchmarks and the shipped runs, and
`train-all` scales it by a quick matmul probe of the machine it runs on. What a preset's
run reached is in its export's manifest, not here.
"""

from __future__ import annotations

import dataclasses

from sora_mini import parallel
from sora_mini.captions import ATTRIBUTE_CLASSES
from sora_mini.diffusion import DiffusionConfig
from sora_mini.dit import DIT_PRESETS, DiTConfig
from sora_mini.text import TEXT_PRESETS, TextConfig

REFERENCE_GFLOPS = 470.0


@dataclasses.dataclass(frozen=True)
class VAETrainPreset:
    """A VAE preset's training: `python -m sora_mini train-vae --preset NAME --out runs/vae
    --export runs/export/vae`. `crop_size`: train on random square crops (the VAE
    is convolutional, so it still encodes whole frames; crops buy more clips a second)."""

    world: str
    steps: int
    batch_size: int
    num_frames: int
    crop_size: int | None = None
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    save_every: int = 500


VAE_TRAIN_PRESETS: dict[str, VAETrainPreset] = {
    "tiny": VAETrainPreset(world="tiny", steps=8000, batch_size=8, num_frames=9, crop_size=16),
    "small": VAETrainPreset(world="small", steps=20000, batch_size=16, num_frames=17),
    "base": VAETrainPreset(world="base", steps=100000, batch_size=32, num_frames=17),
}


@dataclasses.dataclass(frozen=True)
class LowNoiseExpertPreset:
    """The low-noise expert (eDiff-I, Wan 2.2) fine-tuned from the main DiT on its band:
    `python -m sora_mini train-dit --preset NAME --init MODEL --steps STEPS --lr LR
    --time-shift 1 --max-time 0.5 --output-conv 32 --export MODEL --low-noise-below 0.5 ...`.
    It takes over sampling at times `t <= below`."""

    steps: int
    learning_rate: float
    time_shift: float
    max_time: float
    output_conv: int
    below: float


@dataclasses.dataclass(frozen=True)
class TrainAllCost:
    """Seconds per unit of each `train-all` stage on the reference machine."""

    build_data_s: float  # per 10,000 clips
    vae_step_s: float
    encode_clip_s: float
    dit_step_s: float
    expert_step_s: float


@dataclasses.dataclass(frozen=True)
class DiTTrainPreset:
    """A DiT preset's training: `python -m sora_mini train-dit --preset NAME --latents
    runs/latents.npz --out runs/dit --export runs/export`.

    New runs condition on frames (chapter 08) and shift training times toward noise (SD3's
    shift), where the direction of motion is decided. The direction is only in the words:
    the caption-attribute loss keeps "left" and "right" apart in the text encoder, and
    absolute positions let the DiT say where an object starts (RoPE alone is relative).
    The shift costs shape, which is decided at middle times: the low-noise expert, trained
    unshifted on its band only, gives it back."""

    text: str
    steps: int
    batch_size: int
    learning_rate: float
    latent: tuple[int, int, int, int]  # (t, h, w, c): the latents of its VAE preset's clips
    frame_conditioning: bool = True
    time_shift: float = 3.0
    unshifted_fraction: float = 0.0
    max_time: float = 1.0
    absolute_pos: bool = True
    caption_loss: float = 1.0
    low_noise_expert: LowNoiseExpertPreset | None = None
    cost: TrainAllCost | None = None  # None: sized for an accelerator, not timed on the CPU


DIT_TRAIN_PRESETS: dict[str, DiTTrainPreset] = {
    "tiny": DiTTrainPreset(
        text="tiny", steps=6000, batch_size=32, learning_rate=1e-3, latent=(9, 8, 8, 8),
        low_noise_expert=LowNoiseExpertPreset(steps=1600, learning_rate=5e-4, time_shift=1.0, max_time=0.5,
                                              output_conv=32, below=0.5),
        cost=TrainAllCost(build_data_s=40.0, vae_step_s=0.10, encode_clip_s=1 / 126, dit_step_s=0.45,
                          expert_step_s=0.52)),
    # Sized for one Colab GPU or TPU: `dit_train_minutes` estimates its DiT training at
    # under half an hour on an L4, an A100 or a TPU v5e (from FLOPs: it has not run on one
    # yet); a T4 has no bfloat16 units and takes hours. Launch:
    # `python -m sora_mini train-all --preset small --dry-run` prints the estimates, then
    # without --dry-run trains; bf16 is the small DiT's compute dtype already.
    "small": DiTTrainPreset(text="small", steps=50000, batch_size=64, learning_rate=2e-4, latent=(5, 8, 8, 16)),
}

# What an estimate for an accelerator the preset has not run on assumes: the model FLOPs
# utilisation (MFU) of a well-fed small transformer, and the devices Colab lends.
ASSUMED_MFU = 0.35
COLAB_DEVICES = ("T4", "L4", "A100", "TPU v5 lite", "TPU v6 lite")  # keys of parallel.DATASHEET_PEAKS


def dit_train_minutes(preset: str, peak_flops: float, mfu: float = ASSUMED_MFU, steps: int | None = None) -> float:
    """Estimated minutes of a preset's DiT training on a device of `peak_flops` running at
    `mfu`: the model FLOPs of its steps (`parallel.train_flops`) over the achieved rate."""
    p = DIT_TRAIN_PRESETS[preset]
    _, dit_config, _, _ = dit_preset_configs(preset)
    return (steps or p.steps) * parallel.train_flops(dit_config, p.latent, p.batch_size) / (peak_flops * mfu) / 60


def dit_preset_configs(preset: str, *, frame_conditioning: bool | None = None, absolute_pos: bool | None = None,
                       time_shift: float | None = None, unshifted_fraction: float | None = None,
                       caption_loss: float | None = None, output_conv: int | None = None,
                       max_time: float | None = None) -> tuple[TextConfig, DiTConfig, DiffusionConfig, float]:
    """`(text_config, dit_config, diffusion_config, caption_loss)` of a `train-dit` preset;
    each keyword left None takes the preset's value."""
    if preset not in DIT_TRAIN_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; expected one of {sorted(DIT_TRAIN_PRESETS)}")
    p = DIT_TRAIN_PRESETS[preset]

    def pick(value, name):
        return getattr(p, name) if value is None else value

    caption_loss = pick(caption_loss, "caption_loss")
    text_config = TEXT_PRESETS[p.text].replace(attribute_classes=ATTRIBUTE_CLASSES if caption_loss else 0)
    dit_config = DIT_PRESETS[preset].replace(frame_conditioning=pick(frame_conditioning, "frame_conditioning"),
                                             absolute_pos=pick(absolute_pos, "absolute_pos"))
    if output_conv is not None:
        dit_config = dit_config.replace(output_conv=output_conv)
    diffusion_config = DiffusionConfig(time_shift=pick(time_shift, "time_shift"),
                                       unshifted_fraction=pick(unshifted_fraction, "unshifted_fraction"),
                                       max_time=pick(max_time, "max_time"))
    return text_config, dit_config, diffusion_config, caption_loss


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
