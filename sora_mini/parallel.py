"""Chapter 10: running beyond one device. Mixed precision, a 2-D device mesh with FSDP,
sequence parallelism, many hosts, and utilisation.

- **Mixed precision** (`compute_dtype`): matmuls and norms in bfloat16, while the
  parameters, their gradients, AdamW's moments and the EMA stay float32 (Micikevicius et
  al. 2018, "Mixed Precision Training"; bfloat16 needs no loss scaling).
- **A 2-D mesh** `("data", "fsdp")` (`make_mesh`): the batch is split over both axes; the
  parameters, the optimizer state and the EMA are split over `fsdp` (ZeRO-3, Rajbhandari
  et al. 2020; PyTorch's FSDP). Each parameter's split is written into its Flax NNX
  metadata (`fsdp`), `nnx.get_named_sharding` turns metadata into shardings, and
  XLA's SPMD partitioner inserts the all-gathers and reduce-scatters: no hand-written
  collective.
- **Sequence parallelism** (`sequence_parallel`): the tokens of one long video are split
  over a `"seq"` axis; each device attends with its own queries to all keys and values,
  all-gathered inside `shard_map` (the all-gather form of context parallelism, as in
  Megatron-LM's context parallel and Llama 3's training).
- **Many hosts** (`initialize`): JAX's multi-controller runtime, one process a host (or
  a GPU);
  `global_batch` builds each step's batch from the rows each process owns.
- **Utilisation** (`peak_flops`, `train_flops`): model FLOPs per step and MFU (PaLM,
  Chowdhery et al. 2022) against the backend's peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sora_mini import dit as dit_lib
from sora_mini import loop

MESH_AXES = ("data", "fsdp")
BATCH = P(MESH_AXES)  # the batch axis is split over every device of the mesh
PRECISIONS = ("float32", "bfloat16")


# ----------------------------------------------------------------------------------------
# Many hosts: one process a host, every process runs the same program.


def initialize(coordinator: str | None, num_processes: int = 1, process_id: int = 0) -> None:
    """Join JAX's multi-controller runtime (`jax.distributed.initialize`) before any other
    JAX call. `coordinator` is `HOST:PORT` of process 0, with this process's number of
    `num_processes`; `"auto"` lets JAX find all three on a Cloud TPU pod slice, under SLURM
    or Open MPI (there, one process per GPU); None with one process does nothing."""
    if coordinator == "auto":
        if (num_processes, process_id) != (1, 0):
            raise ValueError("coordinator auto finds the processes itself: leave num_processes and process_id out")
        jax.distributed.initialize()
        return
    if coordinator is None and num_processes == 1:
        return
    if coordinator is None or ":" not in coordinator:
        raise ValueError(f"coordinator must be HOST:PORT of process 0 (or auto), got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in 0..{num_processes - 1} (num_processes={num_processes}), "
                         f"got {process_id}")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def is_main_process() -> bool:
    """Process 0 writes the logs and settings; every process writes its part of a checkpoint."""
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------------
# The mesh.


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """How many devices each mesh axis spans: `data * fsdp` must be the device count.
    `data=None` takes every device `fsdp` leaves."""

    data: int | None = None
    fsdp: int = 1

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """`"data=2,fsdp=4"` (either may be left out) -> `MeshShape(2, 4)`."""
        sizes = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in MESH_AXES or not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"mesh must look like data=2,fsdp=4 (axes {MESH_AXES}, sizes >= 1), got {text!r}")
            sizes[name.strip()] = int(value)
        return cls(**sizes)


def make_mesh(shape: MeshShape | None = None, devices=None) -> Mesh:
    """The `("data", "fsdp")` mesh over `devices` (default: all of them, every process's).
    Axes are `Auto`: XLA propagates shardings from the annotated inputs."""
    shape = shape or MeshShape()
    devices = list(jax.devices() if devices is None else devices)
    data = shape.data or max(len(devices) // shape.fsdp, 1)
    if data * shape.fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={shape.fsdp} needs {data * shape.fsdp} devices; "
                         f"there are {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, shape.fsdp), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> tuple[str | None, ...]:
    """Which axis of a parameter of `shape` to split over `fsdp` devices: the largest one
    that divides evenly (the last on a tie); none (replicated) if none does or `fsdp == 1`."""
    spec = [None] * len(shape)
    if fsdp > 1:
        fits = [i for i, n in enumerate(shape) if n % fsdp == 0]
        if fits:
            spec[max(fits, key=lambda i: (shape[i], i))] = "fsdp"
    return tuple(spec)


@contextlib.contextmanager
def fsdp(model: nnx.Module, mesh: Mesh):
    """Within the block, each parameter's FSDP split (`fsdp_spec`) is written into its NNX
    sharding metadata: an `nnx.Optimizer` made there (under `jax.set_mesh(mesh)`) gives
    its moments the same metadata, `shardings` reads it, and a jitted step `constrain`s
    to it. On exit the metadata is removed, so the model is a plain model again."""
    params = [v for _, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)]
    for variable in params:
        variable.set_metadata(out_sharding=fsdp_spec(variable.shape, mesh.shape["fsdp"]))
    try:
        yield model
    finally:
        for variable in params:
            variable.del_metadata("out_sharding")


def shardings(tree, mesh: Mesh):
    """`NamedSharding`s of an NNX state from its variables' metadata (replicated where none)."""
    specs = nnx.get_partition_spec(tree)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec if isinstance(spec, P) else P()), specs,
                        is_leaf=lambda x: isinstance(x, P) or x is None)


def place(tree, mesh: Mesh):
    """Move an NNX state (model, optimizer, EMA) onto the mesh as its metadata says."""
    return jax.device_put(tree, shardings(tree, mesh))


def constrain(tree, mesh: Mesh):
    """Inside a jitted step: keep an updated state on its metadata's shardings."""
    return jax.lax.with_sharding_constraint(tree, shardings(tree, mesh))


def global_batch(rows: np.ndarray, take, mesh: Mesh) -> tuple[jax.Array, ...]:
    """One step's batch as global arrays split over every device along `BATCH`, each
    process reading only the rows of its own devices. `rows` `int [B]` are the step's
    global row numbers (the same in every process); `take(rows) -> tuple of numpy arrays`
    reads those rows."""
    sharding = NamedSharding(mesh, BATCH)
    per_device = {device: index[0] for device, index in sharding.addressable_devices_indices_map((len(rows),)).items()}
    parts = {device: take(rows[index]) for device, index in per_device.items()}
    first = next(iter(parts.values()))
    out = []
    for i, example in enumerate(first):
        shape = (len(rows), *np.shape(example)[1:])
        arrays = [jax.device_put(parts[device][i], device) for device in per_device]
        out.append(jax.make_array_from_single_device_arrays(shape, sharding, arrays))
    return tuple(out)


def bytes_per_device(tree) -> int:
    """Bytes of `tree`'s arrays held by the first local device (a replicated array counts in full)."""
    total = 0
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            total += x.addressable_shards[0].data.nbytes
    return total


# ----------------------------------------------------------------------------------------
# Mixed precision.


@contextlib.contextmanager
def compute_dtype(model: nnx.Module, dtype: str):
    """Within the block, every layer of `model` computes in `dtype` ("bfloat16" or
    "float32"); its parameters stay float32 (the master weights), so gradients, AdamW and
    the EMA stay float32 too. Layers read their `dtype` at call time, so this changes the
    compiled program, not the weights. The model's config is untouched: an export
    samples in the dtype its config says."""
    if dtype not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {dtype!r}")
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and hasattr(m, "param_dtype")]
    before = [m.dtype for m in layers]
    for m in layers:
        m.dtype = jnp.dtype(dtype)
    try:
        yield model
    finally:
        for m, d in zip(layers, before):
            m.dtype = d


# ----------------------------------------------------------------------------------------
# Sequence parallelism.


def sequence_parallel_attention(mesh: Mesh, axis: str = "seq"):
    """`attention(q, k, v)` for `[B, N, H, Dh]` with N split over the mesh's `axis`: each
    device keeps its N / P queries and all-gathers the keys and values, so its attention
    logits are `[B, H, N / P, N]` instead of `[B, H, N, N]`. Exact: softmax rows are whole."""
    spec = P(None, axis, None, None)
    size = mesh.shape[axis]

    def local(q, k, v):  # [B, N / P, H, Dh] each
        k = jax.lax.all_gather(k, axis, axis=1, tiled=True)  # [B, N, H, Dh]
        v = jax.lax.all_gather(v, axis, axis=1, tiled=True)  # [B, N, H, Dh]
        return jax.nn.dot_product_attention(q, k, v)  # [B, N / P, H, Dh]

    def attention(q, k, v):
        if q.shape[1] % size:
            raise ValueError(f"sequence parallelism splits the {q.shape[1]} tokens over {size} devices: "
                             f"the token count must divide by {size}")
        return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)

    return attention


@contextlib.contextmanager
def sequence_parallel(model: nnx.Module, mesh: Mesh, axis: str = "seq"):
    """Within the block, the full-attention layers of every DiT in `model` attend through
    `sequence_parallel_attention(mesh, axis)`. Shard the input latent's time axis over
    `axis` too (`jax.jit(..., in_shardings=...)`) and XLA keeps every token-wise layer
    split the same way. Factorised attention (spatial/temporal blocks) is not split."""
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, dit_lib.SelfAttention)]
    if any(m.kind != "full" for m in layers):
        raise ValueError("sequence parallelism here splits full 3D attention; this DiT has factorised blocks")
    attention = sequence_parallel_attention(mesh, axis)
    for m in layers:
        m.attention_fn = attention
    try:
        yield model
    finally:
        for m in layers:
            m.attention_fn = None


# ----------------------------------------------------------------------------------------
# Utilisation.

# Dense bfloat16 peaks from the datasheets, FLOP/s per JAX device (one GPU; one TPU chip,
# or one TensorCore on TPU v2 and v3, where JAX sees each core as a device). A T4 and a
# V100 have no bfloat16 units: XLA computes bfloat16 in float32 there, so theirs is the
# float32 peak. Matched against `device.device_kind` as whole words, first match first.
DATASHEET_PEAKS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
    "V100": 15.7e12, "T4": 8.1e12, "TPU v6 lite": 918e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v4": 275e12, "TPU v3": 61.5e12, "TPU v2": 22.5e12,
}


def datasheet_peak(kind: str) -> float | None:
    """The `DATASHEET_PEAKS` entry naming `kind` (a `device_kind`) as whole words, or None."""
    for name, flops in DATASHEET_PEAKS.items():
        if re.search(rf"(^|[\s_-]){re.escape(name)}($|[\s_-])", kind, re.I):
            return flops
    return None


@functools.cache
def peak_flops(device=None) -> tuple[float, str]:
    """`(FLOP/s, source)` of one device: the datasheet's dense bfloat16 peak for a known GPU
    or TPU, else (a CPU, an unknown chip) a measured float32 matmul, which `source` says."""
    device = device or jax.devices()[0]
    flops = datasheet_peak(device.device_kind)
    if flops is not None:
        return flops, f"datasheet peak of {device.device_kind}"
    return loop.matmul_gflops(1024, 5), f"measured f32 matmul on {device.platform}"


def total_peak_flops(mesh: Mesh) -> float:
    """The mesh's peak FLOP/s: a device's `peak_flops` times the devices, except on CPUs,
    where simulated devices share one host's cores: the probe's figure times the hosts."""
    flops, _ = peak_flops(mesh.devices.flat[0])
    return flops * (jax.process_count() if mesh.devices.flat[0].platform == "cpu" else mesh.size)


def train_flops(config: dit_lib.DiTConfig, latent_shape, batch_size: int, text_length: int = 72) -> float:
    """Model FLOPs of one training step: forward and backward (3x the forward's matmuls, 2
    FLOPs a multiply-accumulate) for `batch_size` latents of `latent_shape` `(t, h, w, c)`."""
    return 3 * 2 * dit_lib.gflops(config, latent_shape, text_length) * 1e9 * batch_size
