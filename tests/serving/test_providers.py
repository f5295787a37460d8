"""serving.providers: the device setting, the providers that load and the options each gets --
the GPU plans are checked here on a machine without a GPU (``loads`` is the probe's answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditstream.errors import ConfigError

from serving.providers import (CPU, CUDA, TENSORRT, batch_buckets, bucket_for, plan_providers)


def plan(device: str, loading: set[str], shape: list = [None, 1, 28, 28], fp16: bool = False):  # noqa: B006
    return plan_providers(device, lambda p: p in loading, sorted(loading | {CPU}), Path("/cache"), fp16, "image",
                          shape, 64)


def test_cpu_device_never_uses_a_gpu() -> None:
    p = plan("cpu", {TENSORRT, CUDA})
    assert p.names() == [CPU] and not p.on_gpu and p.batch_buckets == ()


def test_auto_without_a_gpu_is_the_cpu_silently() -> None:
    assert plan("auto", set()).names() == [CPU]


def test_asked_for_gpu_that_does_not_load_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="AUDITSTREAM_DEVICE='cuda:1'.*'cpu' or 'auto'.*serve-gpu extra"):
        plan("cuda:1", set())


def test_tensorrt_first_then_cuda_then_cpu_on_the_chosen_device() -> None:
    p = plan("cuda:1", {TENSORRT, CUDA})
    assert p.names() == [TENSORRT, CUDA, CPU] and p.device_id == 1
    trt, cuda = p.providers[0][1], p.providers[1][1]
    assert trt["device_id"] == "1" and cuda == {"device_id": "1"}
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == "/cache"
    assert trt["trt_fp16_enable"] == "False"  # FP32 unless asked: the threshold was certified on FP32
    assert trt["trt_profile_min_shapes"] == "image:1x1x28x28"
    assert trt["trt_profile_max_shapes"] == "image:64x1x28x28"
    assert p.batch_buckets == (1, 2, 4, 8, 16, 32, 64)


def test_fp16_on_request_and_no_profile_for_free_dimensions() -> None:
    p = plan("auto", {TENSORRT}, shape=[None, None, 80], fp16=True)
    trt = p.providers[0][1]
    assert p.names() == [TENSORRT, CPU] and p.device_id == 0
    assert trt["trt_fp16_enable"] == "True" and "trt_profile_min_shapes" not in trt


def test_cuda_alone_when_tensorrt_libraries_are_missing() -> None:
    assert plan("auto", {CUDA}).names() == [CUDA, CPU]


@pytest.mark.parametrize("device", ["auto", "cuda:0"])
def test_gpu_0_is_not_named_in_the_provider_options(device: str) -> None:
    # onnxruntime-gpu 1.31 logs a plugin-EP warning for every session given device_id (H100, 2026-12-05)
    p = plan(device, {TENSORRT, CUDA})
    assert p.device_id == 0
    assert "device_id" not in p.providers[0][1] and p.providers[1][1] == {}


@pytest.mark.parametrize("max_batch, expected", [(1, (1,)), (5, (1, 2, 4, 5)), (64, (1, 2, 4, 8, 16, 32, 64)),
                                                 (100, (1, 2, 4, 8, 16, 32, 64, 100))])
def test_batch_buckets(max_batch: int, expected: tuple[int, ...]) -> None:
    assert batch_buckets(max_batch) == expected


@pytest.mark.parametrize("n, expected", [(1, 1), (3, 4), (33, 64), (64, 64), (70, 70)])
def test_bucket_for(n: int, expected: int) -> None:
    assert bucket_for(n, (1, 2, 4, 8, 16, 32, 64)) == expected
