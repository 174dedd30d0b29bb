"""The compiled CUDA architectures and the import-time check that the device has a kernel image.

The decision is pure Python over the build's list and the device's compute capability, so these
tests need no GPU; the last one reads this build's record.
"""
from __future__ import annotations

import pytest

import lowrank_hpc as lr
from lowrank_hpc._backend import CudaImage, cuda_arch_mismatch, describe_cuda_archs, parse_cuda_archs

# The default list written to _build_info.CUDA_ARCHS by a CUDA 13 build.
DEFAULT = ["75-real", "80-real", "86-real", "89-real", "90-real", "100-real", "120"]


def test_parse_the_default_list():
    images = parse_cuda_archs(DEFAULT)
    assert [image.name for image in images] == [
        "sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120", "compute_120"]
    assert describe_cuda_archs(images) == (
        "sm_75, sm_80, sm_86, sm_89, sm_90, sm_100, sm_120 (PTX compute_120)")


@pytest.mark.parametrize("archs, names", [
    ("90", ["sm_90", "compute_90"]),                      # a narrowed LOWRANK_HPC_CUDA_ARCHS
    ("86;90", ["sm_86", "compute_86", "sm_90", "compute_90"]),
    ("80,90", ["sm_80", "compute_80", "sm_90", "compute_90"]),  # commas, as CMake is told to accept
    (["80-real", "90-virtual"], ["sm_80", "compute_90"]),
    (["90a-real"], ["sm_90a"]),
    ("", []),
])
def test_parse_narrowed_lists(archs, names):
    assert [image.name for image in parse_cuda_archs(archs)] == names


@pytest.mark.parametrize("archs", ["native", "all-major", ["80-real", "all"]])
def test_lists_not_understood_never_block(archs):
    assert parse_cuda_archs(archs) is None
    assert cuda_arch_mismatch(archs, (7, 0)) is None


@pytest.mark.parametrize("archs, capability", [
    (["80-real"], (8, 6)),   # sm_80 SASS runs on 8.6 (same major, higher minor)
    (["80-real"], (8, 7)),   # and on Orin
    (DEFAULT, (8, 6)),
    (DEFAULT, (7, 5)),       # T4
    (DEFAULT, (8, 9)),       # L4, RTX 40
    (DEFAULT, (10, 3)),      # B300 on sm_100 SASS
    (DEFAULT, (12, 0)),      # RTX 50 on sm_120 SASS (and the PTX)
    (["120-virtual"], (12, 0)),  # PTX of compute_120 only: JIT for 12.0
    (DEFAULT, (13, 0)),      # a later GPU: PTX compute_120 JIT-compiled
    ("90", (9, 0)),
    ("90", (10, 0)),         # narrowed to 90: its PTX JIT-compiles for later GPUs
    (["90a-real"], (9, 0)),
    (["100f-real"], (10, 3)),
])
def test_usable(archs, capability):
    assert cuda_arch_mismatch(archs, capability) is None


@pytest.mark.parametrize("archs, capability", [
    (["86-real"], (8, 0)),   # sm_86 SASS does not run on 8.0
    ("86;90", (8, 0)),       # nor does PTX of a newer arch
    (["80-real"], (9, 0)),   # SASS never crosses a major
    (DEFAULT, (7, 0)),       # V100: below the oldest (75)
    (DEFAULT, (11, 0)),      # Thor: neither sm_100 (other major) nor the PTX of 12.0 (newer)
    ("90", (8, 6)),          # the old default on an RTX 30 / A10
    (["90a-real"], (9, 1)),  # arch-specific: exactly 9.0
])
def test_unusable(archs, capability):
    assert cuda_arch_mismatch(archs, capability) is not None


def test_reason_names_build_device_and_fix():
    reason = cuda_arch_mismatch(DEFAULT, (7, 0), "device 0 (Tesla V100-SXM2-16GB, compute capability 7.0)")
    assert reason == (
        "this build has kernels for sm_75, sm_80, sm_86, sm_89, sm_90, sm_100, sm_120 "
        "(PTX compute_120); device 0 (Tesla V100-SXM2-16GB, compute capability 7.0) has none: "
        "rebuild with LOWRANK_HPC_CUDA_ARCHS=70")
    # When the compiling nvcc cannot build for the device, the message says so.
    reason = cuda_arch_mismatch(DEFAULT, (7, 0), compiler_archs=[75, 80, 86, 89, 90, 100, 120, 121])
    assert "a device of compute capability 7.0 has none" in reason
    assert "a CUDA toolkit that supports sm_70" in reason and "sm_75 to sm_121" in reason
    assert "toolkit" not in cuda_arch_mismatch("90", (8, 0), compiler_archs=[75, 80, 90])


def test_image_rules():
    assert CudaImage("sass", 8, 0).runs_on((8, 9)) and not CudaImage("sass", 8, 9).runs_on((8, 6))
    assert CudaImage("ptx", 8, 0).runs_on((12, 1)) and not CudaImage("ptx", 9, 0).runs_on((8, 9))


def test_build_records_its_architectures():
    """A default CUDA build covers the data-centre and desktop GPUs of the last generations."""
    from lowrank_hpc import _build_info

    if not _build_info.CUDA_BUILT:
        pytest.skip("this build has no CUDA backend")
    images = parse_cuda_archs(_build_info.CUDA_ARCHS)
    assert images, _build_info.CUDA_ARCHS
    assert lr.info()["cuda"]["archs"] == [image.name for image in images]
    if _build_info.CUDA_ARCHS_SOURCE != "default":
        pytest.skip(f"LOWRANK_HPC_CUDA_ARCHS narrowed the list to {_build_info.CUDA_ARCHS}")
    for capability in [(8, 0), (8, 6), (8, 9), (9, 0)]:  # A100, RTX 30 / A10, L4 / RTX 40, H100
        assert cuda_arch_mismatch(_build_info.CUDA_ARCHS, capability) is None, capability
        major, minor = capability
        assert CudaImage("sass", major, minor) in images, capability


class _StubCuda:
    """A _cuda module seeing one device of a given compute capability."""

    def __init__(self, capability, name="NVIDIA Test GPU"):
        self.capability, self.name = capability, name

    def device_count(self):
        return 1

    def current_device(self):
        return 0

    def device_compute_capability(self, device):
        return self.capability

    def device_name(self, device):
        return self.name

    def error_string(self, code):
        return f"error {code}"


@pytest.fixture
def stub_cuda(monkeypatch):
    import sys

    from lowrank_hpc import _build_info

    def install(capability, archs):
        stub = _StubCuda(capability)
        monkeypatch.setitem(sys.modules, "lowrank_hpc._cuda", stub)
        monkeypatch.setattr(lr, "_cuda", stub, raising=False)
        monkeypatch.setattr(_build_info, "CUDA_BUILT", True)
        monkeypatch.setattr(_build_info, "CUDA_ARCHS", archs)
        monkeypatch.setattr(_build_info, "CUDA_COMPILER_ARCHS", [75, 80, 86, 89, 90, 100, 120])
        return stub

    return install


def test_probe_turns_a_device_without_image_into_a_reason(stub_cuda):
    """At import, a device the build has no image for makes the backend unavailable, with why."""
    from lowrank_hpc import _backend

    stub = stub_cuda((8, 6), ["90"])
    module, cupy, reason = _backend._probe_cuda()
    assert module is stub and cupy is None
    assert reason == ("this build has kernels for sm_90 (PTX compute_90); device 0 (NVIDIA Test GPU, "
                      "compute capability 8.6) has none: rebuild with LOWRANK_HPC_CUDA_ARCHS=86")


def test_probe_passes_a_device_with_an_image(stub_cuda):
    from lowrank_hpc import _backend

    stub_cuda((8, 6), DEFAULT)
    module, cupy, reason = _backend._probe_cuda()
    assert "compute capability" not in reason  # past the check: CuPy decides the rest
    assert (cupy is None) == bool(reason)


def test_probe_reports_a_failed_capability_query(stub_cuda):
    from lowrank_hpc import _backend

    stub_cuda(-3, DEFAULT)
    assert _backend._probe_cuda()[2] == "no usable CUDA device: error 3"
