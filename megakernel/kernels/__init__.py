"""Per-op Numba CUDA kernels of the layered decoder (one launch per op).

Modules (import the one you need; this package imports none of them):

* ``matvec``       -- y = W x for a bf16 weight matrix, in five numbered versions (naive to bandwidth-bound),
                      plus the launch helpers (stream cache, grid sizing) the other modules share;
* ``fused_matvec`` -- the matvec variants decode needs: RMSNorm + matvec, RMSNorm + gate/up + SiLU, matvec +
                      residual add, gated RMSNorm + matvec + residual add (DeltaNet out_proj);
* ``lm_head``      -- final RMSNorm + LM head + argmax in one launch, and Gumbel-max sampling on the device;
* ``deltanet``, ``attention``, ``rmsnorm`` -- the DeltaNet recurrence, attention and norm kernels.

Every module lists its kernels in ``PTX_SIGNATURES`` for ``megakernel.testing.ptx_check``.
"""
