"""Shapes-world throughput on this machine: clips per second for rendering alone (per
preset), and the wall time to build and save a Hugging Face dataset of N clips.

    python benchmarks/bench_data.py [--n 10000] [--num-proc 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from _report import report
from sora_mini import data


def clips_per_second(config: data.ShapesWorldConfig, n: int) -> float:
    data.make_clip(config, 0)  # warm caches
    t0 = time.perf_counter()
    for seed in range(n):
        data.make_clip(config, seed)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="clips in the dataset build")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for the build")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "render_clips_per_s": {}}
    for name, config in data.SHAPES_WORLD_PRESETS.items():
        n = {"tiny": 2000, "small": 500, "base": 100}[name]
        rate = clips_per_second(config, n)
        results["render_clips_per_s"][name] = round(rate, 1)
        print(f"render {name:5} ({config.num_frames}x{config.height}x{config.width}): {rate:8.1f} clips/s")

    with tempfile.TemporaryDirectory() as tmp:
        # A fresh HF cache, so the build really generates instead of reusing an earlier run.
        import datasets

        datasets.config.HF_DATASETS_CACHE = os.path.join(tmp, "cache")
        sizes = {"train": args.n}
        t0 = time.perf_counter()
        data.build_dataset(data.SHAPES_WORLD_PRESETS["tiny"], os.path.join(tmp, "ds"), sizes,
                           num_proc=args.num_proc, progress=False)
        build = time.perf_counter() - t0
        ds = data.load_shapes_world(os.path.join(tmp, "ds"), "train")
        t0, seen = time.perf_counter(), 0
        for batch in data.iterate_batches(ds, 64, num_epochs=1):
            seen += len(batch["video"])
        load = time.perf_counter() - t0
    results.update(build_n=args.n, build_s=round(build, 1), build_clips_per_s=round(args.n / build, 1),
                   loader_clips_per_s=round(seen / load, 1))
    print(f"build + save a {args.n}-clip dataset (tiny, num_proc={args.num_proc}): {build:.1f}s "
          f"({args.n / build:.0f} clips/s)")
    print(f"iterate_batches(64) over it: {seen / load:.0f} clips/s\n")
    report(results, args.json)


if __name__ == "__main__":
    main()
