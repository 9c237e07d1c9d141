"""The training precision follows the GPU: bf16 at compute capability 8 or more, fp16 below (a T4 is 7.5), fp32 on
the CPU. torch.cuda is mocked (no GPU here); the victim loop and BeDKD's steps use the one `training.precision`."""
import pytest
import torch

from bedkd_core import training
from bedkd_core.defenses import bedkd as bk


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA device of the given compute capability, seen by `training.precision()`."""
    def with_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(training, "device", lambda: torch.device("cuda"))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (major, minor))
    return with_capability


def test_cpu_trains_in_fp32():
    assert training.precision(torch.device("cpu")) == "fp32"
    assert training.precision() == "fp32"  # this machine has no GPU


@pytest.mark.parametrize(("capability", "expected"), [
    ((6, 0), "fp16"),  # P100
    ((7, 0), "fp16"),  # V100
    ((7, 5), "fp16"),  # T4, Colab's free GPU: bf16 would be emulated
    ((8, 0), "bf16"),  # A100
    ((8, 9), "bf16"),  # L4
    ((9, 0), "bf16"),  # H100, H200
])
def test_gpu_precision_follows_the_compute_capability(gpu, capability, expected):
    gpu(*capability)
    assert training.precision() == expected


def test_bedkd_and_the_victim_loop_share_the_choice(gpu):
    import bedkd_core.victim as victim

    assert bk.precision is training.precision and victim.precision is training.precision
    gpu(7, 5)
    assert bk.precision() == "fp16"
    gpu(8, 6)
    assert bk.precision() == "bf16"


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # a CPU build disables the GPU autocast it makes
def test_autocast_and_scaler_per_mode():
    assert training.autocast("fp16").fast_dtype == torch.float16
    assert training.autocast("bf16").fast_dtype == torch.bfloat16
    assert not training.autocast("fp32")._enabled
    for mode in ("fp32", "bf16"):
        assert not training.grad_scaler(mode).is_enabled()  # disabled, it passes loss and step through


def test_the_scaler_of_fp16_is_asked_for_when_cuda_exists(monkeypatch):
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append((device, enabled)))
    training.grad_scaler("fp16")
    training.grad_scaler("bf16")
    assert made == [("cuda", True), ("cuda", False)]
