"""Chapter 10: mixed precision, the (data, fsdp) mesh, sequence parallelism and many hosts,
each checked against the single-device computation. Several devices are simulated on the
CPU (`--xla_force_host_platform_device_count`), so those checks run in subprocesses."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_mini import parallel, store, train
from sora_mini.dit import DiT, DiTConfig

TESTS = os.path.dirname(__file__)


def _run(code: str, devices: int, *args, wait=True):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return _result(proc) if wait else proc


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


# ---- The mesh and the FSDP split -------------------------------------------------------

def test_mesh_shapes_parse_and_fail_clearly():
    assert parallel.MeshShape.parse("data=2,fsdp=4") == parallel.MeshShape(2, 4)
    assert parallel.MeshShape.parse("fsdp=2") == parallel.MeshShape(None, 2)
    assert parallel.MeshShape.parse("") == parallel.MeshShape()
    for bad in ("data=0", "model=2", "data=two", "data"):
        with pytest.raises(ValueError, match="mesh must look like data=2,fsdp=4"):
            parallel.MeshShape.parse(bad)
    with pytest.raises(ValueError, match="needs 4 devices; there are 1"):
        parallel.make_mesh(parallel.MeshShape(2, 2))
    assert parallel.make_mesh().shape == {"data": 1, "fsdp": 1}


def test_fsdp_splits_the_largest_axis_that_divides():
    assert parallel.fsdp_spec((64, 192), 4) == (None, "fsdp")
    assert parallel.fsdp_spec((192, 64), 4) == ("fsdp", None)
    assert parallel.fsdp_spec((64, 64), 4) == (None, "fsdp")  # a tie: the last axis
    assert parallel.fsdp_spec((6, 3), 4) == (None, None)  # nothing divides: replicated
    assert parallel.fsdp_spec((), 4) == ()
    assert parallel.fsdp_spec((64, 192), 1) == (None, None)


def test_fsdp_metadata_is_written_and_removed():
    model = nnx.Linear(8, 16, rngs=nnx.Rngs(0))
    mesh = parallel.make_mesh()
    with parallel.fsdp(model, mesh):
        specs = nnx.get_partition_spec(nnx.state(model))
        assert tuple(specs["kernel"].get_value()) == (None, None)  # fsdp = 1: everything replicated
    assert "out_sharding" not in model.kernel.get_metadata()
    nnx.Optimizer(model, train.loop.make_optimizer(train.DiTTrainConfig()), wrt=nnx.Param)  # plain again


FSDP_SCRIPT = """
import json, sys
import numpy as np
import jax
from flax import nnx
sys.path.insert(0, {tests!r})
import test_train_dit as t
from sora_mini import parallel, store, train
out, mesh = sys.argv[1], parallel.MeshShape.parse(sys.argv[2])
model, ema = train.train_dit(t._model(), t._cache(n=16), t._tc(steps=3, batch_size=8, save_every=100), out,
                             progress=False, mesh=mesh)
np.save(out + "/params.npy",
        np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]))
log = store.read_log(out)
print(json.dumps({{"devices": jax.device_count(), "losses": [r["loss"] for r in log],
                  "model_flops": log[-1]["model_flops"], "mfu": log[-1]["mfu"],
                  "bytes": parallel.bytes_per_device(nnx.state(model)) + parallel.bytes_per_device(ema)}}))
"""


def test_fsdp_on_eight_devices_equals_one_device(tmp_path):
    """A (data=2, fsdp=4) mesh of 8 simulated devices trains exactly as one device does,
    holding a quarter of the weights and EMA on each device; the log carries the MFU."""
    code = FSDP_SCRIPT.format(tests=TESTS)
    eight = _run(code, 8, tmp_path / "eight", "data=2,fsdp=4")
    one = _run(code, 1, tmp_path / "one", "")
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "eight" / "params.npy"), np.load(tmp_path / "one" / "params.npy"),
                               atol=1e-5)
    assert eight["bytes"] <= one["bytes"] / 4 * 1.01  # every weight of this DiT splits four ways
    import test_train_dit as t
    flops = parallel.train_flops(t.DIT, (3, 4, 4, 4), 8, t.TEXT.max_length)
    assert one["model_flops"] == eight["model_flops"] == flops > 0
    assert 0 < one["mfu"] < 1 and 0 < eight["mfu"] < 1


# ---- Mixed precision -------------------------------------------------------------------

def test_bfloat16_computes_in_bfloat16_and_keeps_float32_weights(tmp_path):
    import test_train_dit as t
    model = t._model()
    for _, m in nnx.iter_graph(model):  # give the zero-initialised layers weights, so the output is not 0
        if isinstance(m, nnx.Linear):
            m.kernel[...] = 0.1 * jax.random.normal(jax.random.key(m.kernel.size), m.kernel.shape)
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4))
    f32 = model.dit(x, jnp.full((2,), 0.5), text=jnp.ones((2, 4, 16)), text_mask=jnp.ones((2, 4), bool))
    with parallel.compute_dtype(model, "bfloat16"):
        _, inter = model.dit(x, jnp.full((2,), 0.5), text=jnp.ones((2, 4, 16)), text_mask=jnp.ones((2, 4), bool),
                             return_intermediates=True)
        bf16 = model.dit(x, jnp.full((2,), 0.5), text=jnp.ones((2, 4, 16)), text_mask=jnp.ones((2, 4), bool))
    assert inter["tokens"].dtype == jnp.bfloat16
    assert not np.array_equal(np.asarray(bf16), np.asarray(f32))
    np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.1)
    after = model.dit(x, jnp.full((2,), 0.5), text=jnp.ones((2, 4, 16)), text_mask=jnp.ones((2, 4), bool))
    np.testing.assert_array_equal(np.asarray(after), np.asarray(f32))  # restored on exit
    with pytest.raises(ValueError, match="precision must be one of"):
        with parallel.compute_dtype(model, "float8"):
            pass

    runs = {}
    for precision in ("float32", "bfloat16"):
        out = str(tmp_path / precision)
        m, ema = train.train_dit(t._model(), t._cache(), t._tc(steps=4, precision=precision), out, progress=False)
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(m, nnx.Param)))
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(ema))
        runs[precision] = [r["loss"] for r in store.read_log(out)]
    assert runs["bfloat16"] != runs["float32"]  # bf16 did change the arithmetic...
    np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=0.05)  # ...and not the training
    with pytest.raises(ValueError, match="precision must be one of"):
        train.train_dit(t._model(), t._cache(), t._tc(precision="fp8"), str(tmp_path / "bad"), progress=False)
    assert not os.path.exists(tmp_path / "bad")


# ---- Sequence parallelism --------------------------------------------------------------

SEQUENCE_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from sora_mini import parallel
from sora_mini.dit import DiT, DiTConfig
config = DiTConfig(in_channels=4, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, text_dim=16)
model = DiT(config, rngs=nnx.Rngs(0))
for _, m in nnx.iter_graph(model):  # give the zero-initialised layers weights, so every block matters
    if isinstance(m, nnx.Linear):
        m.kernel[...] = 0.1 * jax.random.normal(jax.random.key(m.kernel.size), m.kernel.shape)
mesh = jax.make_mesh((4,), ("seq",), axis_types=(jax.sharding.AxisType.Auto,))
x = jax.random.normal(jax.random.key(1), (1, 8, 8, 8, 4))  # 8 x 4 x 4 = 128 tokens
t, text, mask = jnp.full((1,), 0.7), jax.random.normal(jax.random.key(2), (1, 5, 16)), jnp.ones((1, 5), bool)
forward = lambda model, x: model(x, t, text=text, text_mask=mask)
plain = nnx.jit(forward)(model, x)
split = NamedSharding(mesh, P(None, "seq"))  # the latent's frames, hence the tokens, over 4 devices
with parallel.sequence_parallel(model, mesh):
    sharded = nnx.jit(forward)(model, jax.device_put(x, split))
    sizes = {{}}
    for n in (8, 16):
        y = jax.ShapeDtypeStruct((1, n, 8, 8, 4), jnp.float32, sharding=split)
        sizes[n] = nnx.jit(forward).lower(model, y).compile().memory_analysis().temp_size_in_bytes
full = {{n: nnx.jit(forward).lower(model, jax.ShapeDtypeStruct((1, n, 8, 8, 4), jnp.float32))
        .compile().memory_analysis().temp_size_in_bytes for n in (8, 16)}}
print(json.dumps({{"error": float(jnp.max(jnp.abs(sharded - plain))), "scale": float(jnp.max(jnp.abs(plain))),
                  "split": [str(s.index) for s in sharded.addressable_shards][:1],
                  "temp_split": sizes, "temp_full": full}}))
"""


def test_sequence_parallel_dit_matches_the_unsharded_dit():
    """One video's tokens over 4 devices: the same output to 1e-5, and less scratch
    memory per device than one device running the whole sequence."""
    res = _run(SEQUENCE_SCRIPT.format(), 4)
    assert res["scale"] > 0.1 and res["error"] < 1e-5, res
    for n in ("8", "16"):
        assert res["temp_split"][n] < res["temp_full"][n], res


def test_sequence_parallel_refuses_what_it_cannot_split():
    mesh = jax.make_mesh((1,), ("seq",), axis_types=(jax.sharding.AxisType.Auto,))
    factorised = DiT(DiTConfig(in_channels=4, hidden_size=32, depth=2, num_heads=2, attention="factorised"),
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="factorised"):
        with parallel.sequence_parallel(factorised, mesh):
            pass
    model = DiT(DiTConfig(in_channels=4, hidden_size=32, depth=2, num_heads=2), rngs=nnx.Rngs(0))
    with parallel.sequence_parallel(model, mesh):
        assert model.blocks is not None
    assert all(m.attention_fn is None for _, m in nnx.iter_graph(model) if hasattr(m, "attention_fn"))


# ---- Many hosts ------------------------------------------------------------------------

HOSTS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from sora_mini import parallel
out, processes, process_id, port, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
parallel.initialize(f"localhost:{{port}}" if processes > 1 else None, processes, process_id)
import jax
import test_train_dit as t
from sora_mini import store, train
train.train_dit(t._model(), t._cache(n=16), t._tc(steps=4, batch_size=8, save_every=2), out, progress=False,
                mesh=parallel.MeshShape.parse("data=2,fsdp=2"), stop_after=None if stop == "-" else int(stop))
losses = [r["loss"] for r in store.read_log(out)] if process_id == 0 else []
print(json.dumps({{"devices": jax.device_count(), "processes": jax.process_count(), "losses": losses}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one_and_resume_exactly(tmp_path):
    """Two processes on localhost with two CPU devices each (JAX's multi-controller
    runtime, as on two hosts) give the losses of one process over the same four devices;
    stopped after two steps and started again, they resume exactly."""
    code = HOSTS_SCRIPT.format(tests=TESTS)
    one = _run(code, 4, tmp_path / "one", 1, 0, 0, "-")
    assert one["devices"] == 4 and one["processes"] == 1 and len(one["losses"]) == 4

    def two_processes(stop):
        port = _free_port()
        procs = [_run(code, 2, tmp_path / "two", 2, i, port, stop, wait=False) for i in (1, 0)]
        return [_result(p) for p in procs][1]

    first = two_processes(2)
    assert first["devices"] == 4 and first["processes"] == 2 and len(first["losses"]) == 2
    resumed = two_processes("-")
    np.testing.assert_allclose(resumed["losses"], one["losses"], rtol=1e-6)
    assert store.read_json(tmp_path / "two" / "train_config.json") == store.read_json(tmp_path / "one" /
                                                                                      "train_config.json")


def test_datasheet_peaks_match_whole_device_names():
    assert parallel.datasheet_peak("Tesla T4") == parallel.DATASHEET_PEAKS["T4"]
    assert parallel.datasheet_peak("NVIDIA L4") == parallel.DATASHEET_PEAKS["L4"]
    assert parallel.datasheet_peak("NVIDIA L40S") == parallel.DATASHEET_PEAKS["L40S"]  # not the L4's
    assert parallel.datasheet_peak("NVIDIA A100-SXM4-40GB") == parallel.DATASHEET_PEAKS["A100"]
    assert parallel.datasheet_peak("TPU v5 lite") == parallel.DATASHEET_PEAKS["TPU v5 lite"]
    assert parallel.datasheet_peak("TPU v5") == parallel.DATASHEET_PEAKS["TPU v5"]
    assert parallel.datasheet_peak("cpu") is None


def test_initialize_checks_its_arguments():
    parallel.initialize(None, 1, 0)  # one process: nothing to join
    with pytest.raises(ValueError, match="leave num_processes and process_id out"):
        parallel.initialize("auto", 2, 1)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parallel.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="process_id must be in 0..1"):
        parallel.initialize("localhost:1234", 2, 2)
