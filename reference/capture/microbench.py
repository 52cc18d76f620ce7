"""Microbenchmarks, one per hardware resource, for calibrating a hwconfig (`python -m sim.fitting.calibrate` fits them).

- copy: streaming copy bandwidth over sizes (bytes read + written); the on-chip cache shows as a knee;
- gemm: matrix products per dtype, large (peak rate) and at decode shapes (GEMV, memory-bound);
- elementwise: a multiply over large tensors (vector units / memory), per dtype;
- attention: scaled_dot_product_attention at decode shapes (one query row over L keys, 4-D), per dtype;
- launch: host time per tiny op in eager mode (dispatch + launch), with the device kept ahead;
- kernel_min: device time of a tiny kernel; graph_gap: per-kernel cost of tiny kernels replayed as a graph.

Device timing on cuda uses CUDA graphs of `repeat` back-to-back calls timed by CUDA events, so launch gaps
do not count (kernel_min and graph_gap separate what remains); on cpu the host clock around `repeat` calls.
Inputs are random (never zeros), rotated among buffers larger than the cache where the cache must not help.
Returns plain data (seconds per call), saved as JSON beside the hwconfig it calibrates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm


class Timer:
    """Seconds per call of `fn`, median of `trials`: CUDA graph + events on cuda, host clock on cpu."""

    def __init__(self, device: torch.device, trials: int = 5) -> None:
        self.device, self.trials = device, trials

    def __call__(self, fn: Callable[[], Any], repeat: int) -> float:
        if self.device.type != "cuda":
            fn()
            times = []
            for _ in range(self.trials):
                t0 = time.perf_counter()
                for _ in range(repeat):
                    fn()
                times.append((time.perf_counter() - t0) / repeat)
            return statistics.median(times)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm-up: handles, workspaces
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeat):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.trials):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / repeat)
        return statistics.median(times)


def cycling(op: Callable[..., Any], *pools: list[torch.Tensor]) -> Callable[[], None]:
    """A call of `op` on the next set of buffers at each call (so repeated calls do not hit the cache)."""
    state = {"i": 0}

    def call() -> None:
        j = state["i"] % len(pools[0])
        state["i"] += 1
        op(*(pool[j] for pool in pools))

    return call


def _repeat_for(seconds_guess: float, budget_s: float = 0.02) -> int:
    return int(max(3, min(200, budget_s / max(seconds_guess, 1e-7))))


def run_microbenchmarks(device: str, dtypes: tuple[str, ...] = ("bfloat16", "float32"), quick: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Measure every resource of `device` ("cpu" or "cuda"); `quick` uses fewer and smaller sizes."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    timer = Timer(dev, trials=3 if quick else 5)
    gen = torch.Generator(device=dev).manual_seed(0)
    out: dict[str, Any] = {"device": device, "device_name": torch.cuda.get_device_name(dev) if cuda else
                           f"cpu ({torch.get_num_threads()} threads)", "torch_version": torch.__version__,
                           "threads": torch.get_num_threads(),
                           "copy": [], "gemm": [], "elementwise": [], "attention": []}

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32).to(dtype)

    max_copy = (2 << 30) if cuda else (256 << 20 if quick else 1 << 30)
    copy_sizes = [1 << s for s in range(16, max_copy.bit_length()) if (1 << s) <= max_copy][:: 2 if quick else 1]
    gemm_shapes = [(4096, 4096, 4096), (8192, 8192, 8192)] if cuda else [(512, 512, 512), (1024, 1024, 1024)]
    gemv_shapes = [(1, 768, 768), (1, 2048, 768), (1, 768, 2048), (8, 4096, 4096), (1, 4096, 4096),
                   (1, 11008, 4096), (1, 32128, 768), (4, 4096, 11008)]
    if quick:
        gemv_shapes = gemv_shapes[::2]
    elem_sizes = [1 << s for s in (20, 24, 27)] if cuda else [1 << s for s in (16, 20, 24)]
    attn_lengths = [128, 512, 2048] if not quick else [128, 1024]
    steps = len(copy_sizes) + len(dtypes) * (len(gemm_shapes) + len(gemv_shapes) + len(elem_sizes) + 2 * len(
        attn_lengths)) + 3
    bar = tqdm(total=steps, desc=f"microbenchmarks on {out['device_name']}", disable=not progress)

    for size in copy_sizes:  # bytes copied; rotate buffers so sizes past the cache really stream from memory
        n = size // 4
        copies = max(1, min(8, (256 << 20) // size)) if size < (64 << 20) else 2
        src = [rand(n) for _ in range(copies)]
        dst = [torch.empty_like(s) for s in src]
        copy = cycling(lambda d, s: d.copy_(s), dst, src)
        seconds = timer(copy, _repeat_for(2 * size / (2e12 if cuda else 2e10)))
        out["copy"].append({"bytes": size, "seconds": seconds, "bytes_moved": 2 * size})
        bar.update()

    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for m, n, k in gemm_shapes + gemv_shapes:
            count = max(1, min(6, (512 << 20) // (2 * n * k * 2)))  # rotate weights past the cache
            mm = cycling(torch.mm, [rand(m, k, dtype=dtype) for _ in range(count)],
                         [rand(k, n, dtype=dtype) for _ in range(count)])
            seconds = timer(mm, _repeat_for(2 * m * n * k / (5e14 if cuda else 5e11) + 2 * n * k / 2e12))
            out["gemm"].append({"m": m, "n": n, "k": k, "dtype": dtype_name, "seconds": seconds})
            bar.update()

    for dtype_name in dtypes:  # per dtype: calibration uses those of the traces it fits
        dtype = getattr(torch, dtype_name)
        for numel in elem_sizes:
            x, y, z = rand(numel, dtype=dtype), rand(numel, dtype=dtype), torch.empty(numel, dtype=dtype, device=dev)
            # into a preallocated output: a cpu would otherwise map fresh pages for every large result
            seconds = timer(lambda x=x, y=y, z=z: torch.mul(x, y, out=z),
                            _repeat_for(3 * numel * 2 / (2e12 if cuda else 2e10)))
            out["elementwise"].append({"numel": numel, "dtype": dtype_name, "seconds": seconds})
            bar.update()
        for heads, head_dim in ((12, 64), (32, 128)):
            for length in attn_lengths:
                # 4-D, as the decoder passes them: PyTorch's fused attention kernels take only 4-D inputs
                q = rand(1, heads, 1, head_dim, dtype=dtype)
                k, v = (rand(1, heads, length, head_dim, dtype=dtype) for _ in range(2))
                seconds = timer(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), 50)
                out["attention"].append({"heads": heads, "length": length, "head_dim": head_dim,
                                         "dtype": dtype_name, "query_shape": list(q.shape), "seconds": seconds})
                bar.update()

    tiny = rand(1)
    # host cost per eager op: the device keeps up with tiny kernels, so the host paces the loop
    n_ops = 2000
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_ops):
        tiny.add_(1.0)
    if cuda:
        torch.cuda.synchronize()
    out["launch_eager_s"] = (time.perf_counter() - t0) / n_ops
    bar.update()
    if cuda:  # the same tiny kernel as a graph: per-kernel device time plus the graph's per-node gap
        out["graph_per_kernel_s"] = timer(lambda: tiny.add_(1.0), 1000)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(200):
                tiny.add_(1.0)
            torch.cuda.synchronize()
        kernels = [e.device_time_total * 1e-6 for e in prof.events() if e.device_time_total > 0 and "add" in e.name]
        out["kernel_min_s"] = statistics.median(kernels) if kernels else out["graph_per_kernel_s"]
    else:
        out["graph_per_kernel_s"] = out["kernel_min_s"] = timer(lambda: tiny.add_(1.0), 2000)
    bar.update(2)
    bar.close()
    return out


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m reference.capture.microbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True, help="device to measure")
    parser.add_argument("--quick", action="store_true", help="fewer and smaller sizes")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the measurements")
    args = parser.parse_args()
    result = run_microbenchmarks(args.device, quick=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{args.out}: launch {result['launch_eager_s'] * 1e6:.1f} us/op, kernel_min "
          f"{result['kernel_min_s'] * 1e6:.2f} us, graph {result['graph_per_kernel_s'] * 1e6:.2f} us/kernel, "
          f"copy peak {max(c['bytes_moved'] / c['seconds'] for c in result['copy']) / 1e9:.0f} GB/s, gemm peak "
          f"{max(2 * g['m'] * g['n'] * g['k'] / g['seconds'] for g in result['gemm']) / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
