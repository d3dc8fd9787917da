"""What the benchmark scripts print about the machine they ran on, and how they keep their results (imported by them
as a sibling module)."""

import os
import platform
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[1]
# smoke and tiny runs check that the code runs; their numbers mean nothing, so they never rewrite a tracked result
SMOKE_RESULTS = REPO / "outputs" / "benchmarks"


def results_path(tracked: Path, smoke: bool, given: Optional[Path] = None) -> Path:
    """Where a run writes its results: ``given`` when the command line names a path; else, for a smoke or tiny run,
    the tracked file's name under ``outputs/benchmarks/`` (ignored by git); else the tracked file itself."""
    if given is not None:
        return Path(given)
    return SMOKE_RESULTS / tracked.name if smoke else tracked


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def total_memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            return f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "? GiB"


def machine(memory: bool = False) -> str:
    """``x86_64, 2 CPUs (model), [24 GiB, ]Python 3.11.7``."""
    parts = [platform.machine(), f"{os.cpu_count()} CPUs ({cpu_model()})"]
    if memory:
        parts.append(total_memory())
    return ", ".join(parts + [f"Python {platform.python_version()}"])


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def finish_results(results: Path, header: List[str], lines: List[str], save: bool = True) -> None:
    """Print the closing load average and, with ``save``, append header, result lines and it to ``results`` as one
    block (a blank line between runs)."""
    footer = f"load average     {load_average()} at the end"
    print(footer)
    if save:
        results.parent.mkdir(exist_ok=True)
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n".join(header + lines + [footer]) + "\n\n")
        print(f"-> {results}")
