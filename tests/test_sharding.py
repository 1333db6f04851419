"""Sharding (issue 13): the primitives partition under a sharded `jit` (their
`custom_partitioning` rules, `jax_blocksparse/_partitioning.py`) and work inside
`shard_map`, with values and gradients equal to one device and no all-gather of
activations. Each check runs in a fresh process with 8 CPU devices
(`--xla_force_host_platform_device_count=8`): sharding_checks.py."""

import pytest

from reference import run_python

CHECKS = ["check_matmul_data_parallel", "check_attention_batch_and_heads", "check_decode",
          "check_shard_map", "check_tensor_parallel", "check_partially_manual_shard_map",
          "check_parallel_dense_module",
          "check_explicit_sharding_mode", "check_explicit_matmul_grads",
          "check_explicit_attention_grads", "check_parallel_linear_nnx"]


@pytest.mark.parametrize("check", CHECKS)
def test_sharding_on_8_cpu_devices(check):
    run_python(f"import sharding_checks as s; s.{check}()", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
