"""How descriptors are computed, as opposed to what they are (features.protocol): device, batching, loader
workers, compute precision, convolution algorithm, batch planning. Most of these change a descriptor only by
float rounding, so a store's identity (its settings) holds the Protocol and, of the Runtime, only what
`Runtime.identity` returns: `gpu_decode`, which changes the pixels, and bf16 compute (explicit, or `auto` on
CUDA), which changes a descriptor by ~1e-3. Each is recorded only when on, so a float32 store made before
either was recorded keeps its settings; probe caches and reproduce rows are keyed by the same dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from vggfeat import defaults
from vggfeat.errors import InputError
from vggfeat.utils.device import resolve_device

from .protocol import Protocol

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"  # auto (CUDA when torch sees a GPU), cpu, cuda or cuda:N; a torch.device works too
    batch_size: int = defaults.BATCH_SIZE  # images per forward pass; their flipped copies ride in the same batch
    workers: int = 0  # loader processes decoding and rescaling images (0: in the calling process)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, float32 on the CPU
    # on the CPU (fp32) a VGG's wide 3x3 convs run as Winograd F(4x4, 3x3), the others as oneDNN conv + ReLU:
    # models.fastconv's kernels, fused into the engine's own copy of the net (the model itself runs its modules)
    winograd: bool = True
    channels_last: bool = True  # NHWC: cuDNN and oneDNN run 3x3 convs fastest so (1.1-1.2x on CPU)
    max_batch_pixels: int | None = None  # input pixels per CPU forward; None: engine.CPU_BATCH_PIXELS
    # CUDA: let cuDNN time its algorithms for each new input shape (torch.backends.cudnn.benchmark), set only
    # for the engine's own forwards (the caller's setting is restored). Off: every (batch, H, W) of the dense
    # protocol is a new shape, and on an H200 the timing cost 3.6x the extraction (docs/benchmarks.md)
    cudnn_benchmark: bool = False
    # Batches are planned (features.plan): views padded bottom/right into at most max_shapes recurring shapes
    # per scale (exact for the VGGs, which mask the padding; other nets batch equal sizes only). pad=False:
    # equal sizes only. plan_window: images a view may wait for its batch to fill before it is run partial
    # (None: 2048 on CUDA, 64 on the CPU, where batches are small); bounds the work an interruption loses
    pad: bool = True
    max_shapes: int = 32
    plan_window: int | None = None
    # torch.compile each net once per recurring bucket shape (CUDA: to be measured against eager before it
    # becomes a default; on the CPU it changes nothing measurable)
    compile: bool = False
    # decode JPEGs on the GPU (torchvision.io.decode_jpeg, batched) and rescale there (antialiased bilinear):
    # off the CPU's critical path, but not PIL's pixels, so descriptors differ slightly; CUDA only
    gpu_decode: bool = False
    # on the CPU, keep freed tensor memory in the process (utils.heap): each batch's activation maps reuse the
    # last batch's pages instead of being mapped and zeroed again (15% of a VGG-16 forward; peak RSS +16%)
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0, got {self.workers}")
        if self.max_batch_pixels is not None and self.max_batch_pixels < 1:
            raise InputError(f"max_batch_pixels must be >= 1, got {self.max_batch_pixels}")
        if self.max_shapes < 1 or (self.plan_window is not None and self.plan_window < 1):
            raise InputError(f"max_shapes and plan_window must be >= 1, got {self.max_shapes}, {self.plan_window}")
        if self.gpu_decode and str(self.device) != "auto" and not str(self.device).startswith("cuda"):
            raise InputError(f"--gpu-decode decodes on a CUDA GPU, but the device is {self.device}; use --device cuda")

    def torch_device(self) -> torch.device:
        """The resolved torch.device (`auto` picks CUDA when there is a GPU)."""
        import torch

        return self.device if isinstance(self.device, torch.device) else resolve_device(self.device)

    def effective_precision(self) -> str:
        """float32 or bfloat16: the precision the engine computes in, `auto` resolved with the device."""
        if self.precision != "auto":
            return self.precision
        return "bfloat16" if self.torch_device().type == "cuda" else "float32"

    def identity(self) -> dict[str, Any]:
        """The settings of this runtime that change descriptors beyond float rounding, as a store's settings
        (and the keys of probe caches and reproduce rows) record them: each only when on."""
        bf16 = self.effective_precision() == "bfloat16"
        return {**({"gpu_decode": True} if self.gpu_decode else {}), **({"precision": "bfloat16"} if bf16 else {})}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["device"] = str(self.device)
        return d


def recorded_precision(settings: dict[str, Any]) -> str:
    """The effective precision a store's settings (or an index's copy of them) record: bfloat16 where
    `Runtime.identity` wrote it, else float32."""
    return "bfloat16" if settings.get("precision") == "bfloat16" else "float32"


def settings_from(
    protocol: Protocol | None,
    runtime: Runtime | None,
    legacy: dict[str, Any],
    runtime_defaults: dict[str, Any] | None = None,
) -> tuple[Protocol, Runtime]:
    """(Protocol, Runtime) from the objects, or from the loose keyword arguments the API took before them
    (layer=..., scales=..., batch_size=..., device=...). Mixing an object with its loose keywords is an error:
    one of the two would silently lose."""

    p_names = {f.name for f in fields(Protocol)}
    r_names = {f.name for f in fields(Runtime)}
    unknown = sorted(set(legacy) - p_names - r_names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
    p_kw = {k: v for k, v in legacy.items() if k in p_names}
    r_kw = {k: v for k, v in legacy.items() if k in r_names}
    if protocol is not None and p_kw:
        raise TypeError(f"pass {', '.join(sorted(p_kw))} inside protocol=, not beside it")
    if runtime is not None and r_kw:
        raise TypeError(f"pass {', '.join(sorted(r_kw))} inside runtime=, not beside it")
    if protocol is None:
        if "scales" in p_kw:
            p_kw["scales"] = tuple(p_kw["scales"])
        protocol = Protocol(**p_kw)
    if runtime is None:
        runtime = Runtime(**{**(runtime_defaults or {}), **r_kw})
    return protocol, runtime
