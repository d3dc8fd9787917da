"""How this process was launched: the one fact every multi-process entry point needs.

Accelerate joins processes over gloo only when told that it runs on the CPU, and ``accelerate launch --cpu``
starts a single process unless MPI is set up. Several CPU workers therefore come from ``torchrun
--nproc_per_node N`` or ``accelerate launch --multi_gpu --num_processes N`` on a machine without CUDA; both
set ``WORLD_SIZE``. Several processes and no CUDA can only mean CPU workers.
"""

import os


def use_cpu_workers() -> bool:
    """The ``cpu`` argument for ``Accelerator``/``PartialState``: true for ``--cpu`` launches and for several
    processes on a machine without CUDA."""
    import torch
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())
