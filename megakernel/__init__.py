# Under NUMBA_ENABLE_CUDASIM=1, make Numba's CUDA simulator honest (concurrent blocks, real
# grid barriers, warp primitives): see megakernel/simulator.py.
import numba as _numba

if _numba.config.ENABLE_CUDASIM:
    from megakernel import simulator as _simulator

    _simulator.install()
