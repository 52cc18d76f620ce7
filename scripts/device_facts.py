"""The facts of the machine a measurement ran on, as one JSON object on stdout (scripts/gpu_campaign.sh writes them to
env.json beside its measurements).

    python scripts/device_facts.py --device cuda|cpu

Always: Python and torch versions, torch's intra-op threads, the CPU model and core count. On cuda also the GPU
as torch sees it (name, compute capability, multiprocessors, memory, L2) and, where nvidia-smi answers, the driver,
clocks and power limit as it reads them (it changes no setting).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from typing import Any

# what nvidia-smi is asked (read only): the driver, the clocks now and at most, the power limit
NVIDIA_SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.limit",
                     "memory.total")
NVIDIA_SMI_TIMEOUT_S = 20  # a wedged driver must not hold the campaign


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nvidia_smi() -> dict[str, str] | str:
    """GPU 0 as nvidia-smi reads it, or why it could not."""
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
                               "--format=csv,noheader", "--id=0"], capture_output=True, text=True,
                              timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"not read: {err}"
    if done.returncode:
        return f"not read: exit {done.returncode}: {done.stderr.strip()[:200]}"
    return dict(zip(NVIDIA_SMI_FIELDS, (v.strip() for v in done.stdout.strip().split(","))))


def facts(device: str) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"device": device, "python": sys.version.split()[0], "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("scripts/device_facts.py: error: --device cuda: no CUDA device is available here")
        props = torch.cuda.get_device_properties(0)
        out |= {"name": props.name, "cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory,
                "l2_bytes": getattr(props, "L2_cache_size", None), "gpus": torch.cuda.device_count(),
                "nvidia_smi": nvidia_smi()}
    else:
        out["name"] = out["cpu"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/device_facts.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), required=True, help="the device to describe")
    args = parser.parse_args(argv)
    print(json.dumps(facts(args.device), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
