"""The compiled regime's fit: what compiled projections need that eager fits do not give, from the stage wall
times of compiled measurements (reference.capture.measure --compile: `extra.measurement` "compiled", no per-op
times).

A compiled decode stage is one graph call (`python -m sim.run --launch compiled`: the trace fused by sim.fusion,
replayed as one graph). Its projection, on a cpu (a synchronous host) as on an accelerator (graph replay: the
host launches once, the device runs the kernels one after another), is linear in three figures:

    stage_s = launch_graph_s + sum over kernels (graph_kernel_gap_s + work_s)
              + n_library x library_fixed_s + n_generated x generated_fixed_s

- `host.launch_graph_s`: the host's cost per stage: the graph call (on a cpu Dynamo's guards and the generated
  Python wrapper) and the decode loop's own work between stages (the stage times are contiguous);
- `library_fixed_s`: what a library kernel (matrix products, the LM head, attention) costs beyond its work,
  called from a compiled graph (`compiled.library_fixed_s`). On a cpu an eager op's measured time includes the
  framework's dispatch, which the graph's calls skip, so the eager fixed times do not carry over;
- `generated_fixed_s`: the same for a kernel the compiler generated (`compiled.generated.fixed_s`);
- `work_s`: each kernel's compute or memory time at the efficiencies the eager calibration found (a library
  kernel its op kind's; a generated kernel the elementwise class's, which the microbenchmarks anchor: it
  streams its inputs as they do), the on-chip cache advancing kernel by kernel as in a projection.

The three are fitted by least squares of the error relative to each decode stage, bounded at zero, with a soft-L1
loss so that the stages a busy machine stretched do not pull the fit. Prefill and encoder stages run eagerly in
compiled decoding and are not part of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from sim.engine import OnChipCache, kernels_of, project
from sim.fusion import LIBRARY_CLASSES, fuse
from sim.hardware import CompiledFits, HwConfig, KernelFit
from sim.kernels import kernel_cost
from sim.trace import Trace

DECODE_STAGES = ("decode", "speed")  # the stages compiled decoding runs compiled (prefill and encoder: eager)


def is_compiled_measurement(trace: Trace) -> bool:
    """Whether `trace` measured compiled decoding (reference.capture.measure --compile): stage and end-to-end wall
    times of the compiled runs, the ops of the compiled formulation, no per-op times."""
    extra = trace.header.extra
    return isinstance(extra, dict) and extra.get("measurement") == "compiled"


def compiled_stage_seconds(trace: Trace, hw: HwConfig) -> list[float]:
    """Each stage's projected seconds as compiled decoding runs it: decode and SPEED stages compiled (the trace
    fused, each stage one graph: `project(..., "compiled")`), prefill and encoder stages eager."""
    compiled = project(trace, hw, "compiled")
    eager = project(trace, hw, "eager") if any(s.kind not in DECODE_STAGES for s in trace.stages) else compiled
    return [(c if s.kind in DECODE_STAGES else e) / compiled.clock_hz
            for s, c, e in zip(trace.stages, compiled.stage_cycles, eager.stage_cycles)]


def generated_fit(hw: HwConfig, fixed_s: float = 0.0) -> KernelFit:
    """The fit of a generated kernel: the elementwise class's efficiencies (or the compiled section's, or none)
    with `fixed_s`."""
    base = hw.classes.get("elementwise") or (hw.compiled.generated if hw.compiled is not None else KernelFit())
    return dataclasses.replace(base, fixed_s=fixed_s)


def with_compiled(hw: HwConfig, generated: KernelFit, library_fixed_s: float,
                  launch_graph_s: float | None = None) -> HwConfig:
    """`hw` with a compiled section (and the host's cost per stage, where given)."""
    host = hw.host if launch_graph_s is None else dataclasses.replace(hw.host, launch_graph_s=launch_graph_s)
    return dataclasses.replace(hw, compiled=CompiledFits(library_fixed_s, generated), host=host)


@dataclasses.dataclass
class CompiledStages:
    """The measured decode stages of compiled traces, as the linear model of the module docstring sees them: per
    stage its wall time, its library and generated kernels, and the seconds of its kernels' work and gaps."""

    wall_s: np.ndarray
    n_library: np.ndarray
    n_generated: np.ndarray
    work_s: np.ndarray

    def predict(self, launch_s: float, library_fixed_s: float, generated_fixed_s: float) -> np.ndarray:
        """Projected seconds of every stage."""
        return launch_s + self.work_s + self.n_library * library_fixed_s + self.n_generated * generated_fixed_s


def compiled_stages(traces: list[Trace], hw: HwConfig, generated: KernelFit) -> CompiledStages:
    """The decode stages with a wall time of compiled measurements, fused as the compiled projection fuses them,
    each kernel's work at its efficiencies (library kernels: `hw`'s fits; generated ones: `generated`), no fixed
    time."""
    unit = with_compiled(hw, dataclasses.replace(generated, fixed_s=0.0), 0.0)
    gap_s = hw.host.graph_kernel_gap_s
    rows: list[tuple[float, int, int, float]] = []
    for trace in traces:
        ft = fuse(trace).trace
        cache = OnChipCache(hw.peak.l2_capacity_bytes)
        kernels = iter(kernels_of(ft, hw))
        for stage in ft.stages:
            mine = [next(kernels) for _ in ft.ops_of_stage(stage.stage)]
            dram = [cache.serve(k) for k in mine]  # the cache advances through every stage, kept or not
            if stage.kind in DECODE_STAGES and stage.wall_s:
                work = sum(kernel_cost(k, unit, d, compiled=True).time_s + gap_s for k, d in zip(mine, dram))
                library = sum(k.cls in LIBRARY_CLASSES for k in mine)
                rows.append((stage.wall_s, library, len(mine) - library, work))
    if not rows:
        raise ValueError("compiled measurements without a decode stage that has a wall time: nothing to fit")
    wall, library, generated, work = (np.array(column, dtype=float) for column in zip(*rows))
    return CompiledStages(wall, library, generated, work)


def fit_compiled(traces: list[Trace], hw: HwConfig) -> dict[str, Any]:
    """The host's cost per stage and the fixed times of library and generated kernels that best explain the decode
    stage wall times of compiled measurements (module docstring). Returns the fitted figures, the `compiled`
    section they make, the number of stages and the fit's median absolute error per stage in %."""
    stages = compiled_stages(traces, hw, generated_fit(hw))

    def residuals(x: np.ndarray) -> np.ndarray:
        return stages.predict(*x) / stages.wall_s - 1

    fit = least_squares(residuals, x0=[1e-5, 1e-6, 1e-6], bounds=([0.0] * 3, [1e-2, 1e-3, 1e-3]),
                        x_scale=[1e-5, 1e-6, 1e-6], loss="soft_l1", f_scale=0.1)
    launch, library, generated = (float(f"{v:.4g}") for v in fit.x)
    errors = np.abs(stages.predict(launch, library, generated) / stages.wall_s - 1) * 100
    generated_section = {k: v for k, v in dataclasses.asdict(generated_fit(hw, generated)).items() if v is not None}
    section = {"library_fixed_s": library, "generated": generated_section}
    return {"launch_graph_s": launch, "library_fixed_s": library, "generated_fixed_s": generated,
            "compiled": section, "stages": len(stages.wall_s), "median_abs_pct": float(np.median(errors))}
