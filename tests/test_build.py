"""The package's build: where nvcc exists, the CUDA extension must have been compiled."""

import os
import re
import shutil
import subprocess

import jax
import pytest

import jax_blocksparse as jbs
from jax_blocksparse import _cuda


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc: pure-JAX build")
@pytest.mark.skipif(os.environ.get("JAX_BLOCKSPARSE_CUDA_ARCHS") == "",
                    reason="built without CUDA: JAX_BLOCKSPARSE_CUDA_ARCHS is empty")
@pytest.mark.skipif(os.environ.get("JAX_BLOCKSPARSE_DISABLE_CUDA", "0") != "0",
                    reason="CUDA path disabled by the environment")
def test_cuda_extension_is_built_and_registered():
    assert _cuda._ext is not None, "nvcc is present but the CUDA extension was not built"
    assert jbs.cuda_built()
    targets = set(_cuda._ext.registrations())
    assert {"jax_blocksparse_sdd", "jax_blocksparse_dsd", "jax_blocksparse_dds",
            "jax_blocksparse_block_lists"} <= targets


def test_cuda_available_means_the_kernels_can_run_here():
    """`cuda_available()`: built (and enabled) *and* a CUDA device visible."""
    try:
        has_cuda_device = bool(jax.devices("cuda"))
    except RuntimeError:
        has_cuda_device = False
    assert jbs.cuda_available() == (jbs.cuda_built() and has_cuda_device)
    if not has_cuda_device:
        assert not jbs.cuda_available()


def _cmake():
    """A `cmake` that can configure this project (3.26 or newer), or None."""
    path = shutil.which("cmake")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    return path if found and tuple(map(int, found.groups())) >= (3, 26) else None


@pytest.mark.skipif(_cmake() is None, reason="no cmake >= 3.26")
def test_empty_cuda_archs_builds_no_cuda_code(tmp_path):
    """`JAX_BLOCKSPARSE_CUDA_ARCHS=` (empty) configures without CUDA even where nvcc is
    installed: nothing for the GPU is compiled (the README's fast install on a CPU)."""
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_BLOCKSPARSE_CUDA_ARCHS="")
    result = subprocess.run([_cmake(), "-S", source, "-B", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "building without CUDA kernels" in result.stdout
    assert "CMAKE_CUDA_COMPILER" not in (tmp_path / "CMakeCache.txt").read_text()


def test_every_query_cursor_sets_every_field():
    """Each kernel that declares a `QueryCursor` (cuda/attention/shared.cuh) assigns every
    field of its configuration (those before the walking state `gi, t, n, npart, list`),
    itself or through `QueryCursor::Init`, which assigns them all. A field left unset is
    undefined in device code: after `q_end` was added, the one-pass backward
    (bwd_sm90_onepass.cu) never set it, the compiler folded the cursor's `s < q_end` to
    false, and every CTA walked no steps (dq, dk, dv all zero, no error)."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cuda")
    with open(os.path.join(root, "attention", "shared.cuh")) as fh:
        header = fh.read()
    body = re.search(r"struct QueryCursor \{(.*?)\n  int gi, t, n, npart;", header, re.S)
    assert body, "QueryCursor's layout changed: update this test"
    fields = set()
    for line in body.group(1).splitlines():
        decl = line.split("//")[0].strip()
        if decl.endswith(";") and "(" not in decl:
            names = decl.rstrip(";").replace("*", " ").split(",")
            fields |= {n.split()[-1] for n in names if n.strip()}
    assert {"counts", "lists", "q_end", "causal", "group"} <= fields, fields
    init = re.search(r"void Init\((.*?)\n  \}", header, re.S)
    assert init, "QueryCursor::Init is gone: update this test"
    unset = sorted(f for f in fields if not re.search(rf"\b{f}\s*=", init.group(1)))
    assert not unset, f"QueryCursor::Init leaves {unset} unset"
    users = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith((".cu", ".cuh")):
                continue
            with open(os.path.join(folder, name)) as fh:
                text = fh.read()
            for var in re.findall(r"QueryCursor<\w+(?:, \w+)?> (\w+);", text):
                users += 1
                if re.search(rf"\b{var}\.Init\(", text):
                    continue
                unset = sorted(f for f in fields if not re.search(rf"\b{var}\.{f}\s*=", text))
                assert not unset, f"{name}: QueryCursor {var} leaves {unset} unset"
    assert users >= 4, users  # the FA2 dK/dV kernel, bwd_sm90.cu, _d256.cu, _onepass.cu


def test_default_variants_are_the_dispatchs():
    """The backward variants Python routes by (`_cuda.SM90_BACKWARD_DEFAULT` and
    `SM90_BACKWARD_BEYOND_ONEPASS`: which calls declare variant 4's workspaces) are the
    constants of the C++ dispatch (cuda/attention/dispatch.cu), which picks the kernels."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cuda", "attention",
                        "dispatch.cu")
    with open(path) as fh:
        text = fh.read()
    for cxx, py in (("kSm90BackwardDefault", "SM90_BACKWARD_DEFAULT"),
                    ("kSm90BackwardBeyondOnepass", "SM90_BACKWARD_BEYOND_ONEPASS")):
        found = re.search(rf"constexpr int {cxx} = (\d+);", text)
        assert found, f"{cxx} is gone from dispatch.cu: update this test"
        assert int(found.group(1)) == getattr(_cuda, py), (cxx, py)


@pytest.mark.skipif(_cuda._ext is None, reason="the CUDA extension is not built")
def test_attention_kernel_rows_of_the_tests_are_the_extensions():
    """tests/conftest.py's copy of the attention dispatch table (what the tests route by
    where the extension is not built) is the table the extension reports."""
    from conftest import attention_kernel_rows
    assert _cuda.ATTENTION_KERNELS == attention_kernel_rows()


@pytest.mark.skipif(_cuda._ext is None, reason="the CUDA extension is not built")
def test_decode_kernel_rows_and_limits_are_the_extensions():
    """tests/conftest.py's copy of the decode dispatch table is the table the extension
    reports, and the limits `_cuda.DECODE` routes by (on every platform) are the kernel's
    (cuda/attention_decode.h)."""
    from conftest import decode_kernel_rows
    assert _cuda.DECODE_KERNELS == decode_kernel_rows()
    for name, value in _cuda._ext.decode_limits.items():
        assert _cuda.DECODE[name] == value, name


def test_decode_routing_follows_the_dispatch_table(decode_kernels):
    """The rows of the C++ decode table decide `decode_unsupported`: each row's (q dtype,
    k/v dtype, head dim) runs the kernel (at the block and page sizes and query counts of
    its limits); other dtypes, caches and head dims say why not."""
    import jax.numpy as jnp
    rows = decode_kernels
    assert rows
    why = _cuda.decode_unsupported
    for r in rows:
        kv = None if r.kv_dtype == r.dtype else jnp.dtype(r.kv_dtype)
        assert why(jnp.dtype(r.dtype), r.head_dim, 64, None, kv) is None, r
        assert why(jnp.dtype(r.dtype), r.head_dim, 64, 16, kv, tq=4) is None, r
    assert why(jnp.float32, 128, 64, None) == "dtype float32"
    assert why(jnp.bfloat16, 128, 64, None, jnp.float32) == "k, v dtype float32"
    assert why(jnp.bfloat16, 80, 64, None) == "head dim 80"
    assert "multiple of 16" in why(jnp.bfloat16, 128, 40, None)
    assert "more than" in why(jnp.bfloat16, 128, 64, None, tq=_cuda.DECODE["max_queries"] + 1)


def test_attention_routing_follows_the_dispatch_table(monkeypatch, attention_kernels):
    """The rows of the C++ attention dispatch table (the extension's where it is built)
    decide the routing: each row's (dtype, head dim, block size) runs fused where its
    family runs (the FA3-design families with segment ids too, the one-pass backward with
    its workspaces), capped where the row takes a cap; a head dim without rows does not.
    The table's own consistency, which the routing relies on: one row per (dtype, head dim,
    block size, phase, variant, persistent) (FindAttentionKernel takes the first), each
    family a full product of its dtypes, head dims and block sizes with one soft-cap
    capability, and a plain row under each persistent one."""
    import jax.numpy as jnp
    rows = attention_kernels
    assert rows
    keys = [(r.dtype, r.head_dim, r.block_size, r.backward, r.variant, r.persistent)
            for r in rows]
    assert len(set(keys)) == len(keys)
    assert all(k[:5] + (False,) in keys for k in keys if k[5])
    families = _cuda.attention_families(rows)
    for name, family in families.items():
        plain = {(r.dtype, r.head_dim, r.block_size, r.softcap) for r in rows
                 if not r.persistent and _cuda._family(r) == name}
        assert plain == {(t, d, bs, family.softcap) for t in family.dtypes
                         for d in family.head_dims for bs in family.block_sizes}, name
    monkeypatch.setattr(_cuda, "_sm90a_device", lambda: True)
    for r in rows:
        if r.persistent:
            continue
        family = _cuda._family(r)
        hopper = family.startswith("sm90_")
        monkeypatch.setattr(_cuda, "sm90_forward", lambda: hopper)
        monkeypatch.setattr(_cuda, "sm90_backward", lambda: hopper)
        monkeypatch.setattr(_cuda, "SWITCHES", _cuda.SWITCHES._replace(attn_bwd_variant=r.variant))
        dtype = jnp.dtype(r.dtype)
        if family == "onepass_backward":
            assert _cuda.onepass_backward(dtype, r.head_dim, r.block_size), r
            continue
        for cap in (0.0, 2.0) if r.softcap else (0.0,):
            why = _cuda.fused_attention_unsupported(
                dtype, r.head_dim, r.block_size, 1024, 1024, hopper, False, 1,
                forward=not r.backward, softcap=cap)
            assert why is None, (r, cap, why)
        assert _cuda.fused_attention_unsupported(
            dtype, 80, r.block_size, 1024, 1024, False, False, 1,
            forward=not r.backward) == "head dim 80"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
@pytest.mark.parametrize("name", ("attention_harness", "matmul_harness", "decode_harness"))
def test_kernel_harness_compiles(tmp_path, name):
    """benchmarks/NAME.cu (the launchers called from C++ outside JAX, for Nsight Compute on
    the GPU machine) compiles against cuda/attention.h, cuda/attention_decode.h and
    cuda/matmul.h as they stand."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-I",
         os.path.join(root, "cuda"), "-c", os.path.join(root, "benchmarks", name + ".cu"),
         "-o", str(tmp_path / "harness.o")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
