"""Benchmarks and results: measuring the stages, never part of them.

* ``decode``   -- ``python -m megakernel.bench``: every system side by side (tg128 at several contexts, pp512),
                  each checked against the reference before it is timed;
* ``systems``  -- the systems the decode benchmark knows (reference, torch.compile, transformers, the kernel
                  stages, llama.cpp) and how each is checked;
* ``kernels``  -- ``python -m megakernel.bench.kernels``: per-kernel time, GB/s and fraction of copy bandwidth;
* ``results``  -- ``python -m megakernel.bench.results``: results JSON -> the README table and chart;
* ``run_info`` -- versions and device names recorded with every run.
"""
