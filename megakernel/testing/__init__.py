"""Test machinery for the kernel stages (not imported by them at run time):

* ``simulator``  -- makes Numba's CUDA simulator honest (concurrent blocks, real grid barriers, warp primitives,
                    poisoned memory); installed by ``import megakernel`` when ``NUMBA_ENABLE_CUDASIM=1``;
* ``races``      -- the simulator's race detector (happens-before over shared and global memory);
* ``schedules``  -- the orders in which the simulator starts and interleaves threads (forward, reverse, random);
* ``ptx_check``  -- compiles kernels for sm_90 without a GPU and fails on float64, local memory and spills.
"""
