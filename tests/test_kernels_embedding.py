"""Embedding lookup and the end-of-step position advance (simulator), and their sm_90 PTX."""

import torch

import megakernel  # noqa: F401  (installs the honest simulator)
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import embedding as K
from reference.check import check

A = launch.as_kernel_array


def test_lookup_widens_the_row_to_fp32():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(37, 24, generator=g).to(torch.bfloat16)
    h = launch.poison_(torch.empty(24))
    token = torch.tensor([35], dtype=torch.int32)
    K.embed_lookup(A(launch.words(table).view(-1)), A(token), A(h), 24)
    check("embedding row 35", table[35].float(), h, 0, exact=True)


def test_advance_records_the_token_and_moves_the_position():
    position = torch.tensor([5], dtype=torch.int32)
    history = torch.full((8,), -1, dtype=torch.int32)
    for token in (17, 3):
        K.advance(A(position), A(torch.tensor([token], dtype=torch.int32)), A(history))
    assert position.item() == 7 and history.tolist() == [-1, -1, -1, -1, -1, 17, 3, -1]


def test_ptx_sm90_clean():
    reports = ptx_check.check_in_subprocess("megakernel.kernels.embedding")
    assert {r.name for r in reports} == set(K.PTX_SIGNATURES)
    for r in reports:
        assert r.ok, r.problems
