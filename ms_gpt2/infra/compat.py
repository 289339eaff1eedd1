"""Every MindNLP / mindtorch version quirk ms_gpt2 works around lives here, and only here.

mindnlp 0.5 runs Hugging Face ``transformers`` on MindSpore through ``mindtorch``, a stand-in for
``torch``. ``mindtorch`` dispatches each op by name to a per-device table (``mindtorch._apis.cpu``,
``.npu``, ``.gpu``). In mindnlp 0.5.1 the CPU table has gaps that the Hugging Face ``Trainer`` walks
straight into (AdamW needs ``addcdiv``; gradient clipping needs ``linalg_vector_norm`` over all
dimensions). We fill the gaps *in the dispatch table itself*, so every caller (optimizer, clipping,
user code) is fixed at once and the NPU/GPU tables are never touched.

Each shim names the exact versions it was written for. On any other version it is not applied and
a warning says so: a shim that silently patched an op it was not written for could hide a real fix
or a changed signature upstream.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

#: The only combination the shims were written and tested against (see README, "The stack").
WRITTEN_FOR = {"mindspore": "2.7.0", "mindnlp": "0.5.1"}


class CompatWarning(UserWarning):
    """A shim was not applied because the installed stack is not the one it was written for."""


@dataclass(frozen=True)
class Shim:
    name: str
    why: str
    install: Callable[[], None]


def installed_versions() -> dict[str, str]:
    # Distribution metadata, not ``mindnlp.__version__``: the 0.5.1 wheel still says "0.5.0rc2".
    from importlib.metadata import version

    return {name: version(name) for name in WRITTEN_FOR}


# --------------------------------------------------------------------------------------------------
# CPU shims for mindtorch (mindnlp 0.5.1)
# --------------------------------------------------------------------------------------------------

def _cpu_table():
    from mindtorch._apis import cpu

    return cpu


#: What each shim replaced (None: the op was missing), so tests can show the gap is real.
ORIGINALS: dict[str, Callable | None] = {}


def _replace(table, name: str, shim: Callable) -> None:
    ORIGINALS.setdefault(f"cpu.{name}", getattr(table, name, None))
    setattr(table, name, shim)


def write_parameter(param, value) -> None:
    """Write ``value`` (array-like, the parameter's shape) into a MindSpore ``Parameter`` in place.

    MindSpore 2.7: ``Parameter.set_data`` swaps in a new buffer, and a graph compiled before reads
    garbage from it (measured: a 0-d parameter read back as -1.9e17 after ``set_data``, from a
    Python float, a NumPy scalar or a NumPy array alike). ``ops.assign`` writes into the buffer the
    graphs hold, before or after they were compiled."""
    import mindspore
    import numpy as np
    from mindspore import Tensor, ops

    dtype = mindspore.dtype_to_nptype(param.dtype)
    ops.assign(param, Tensor(np.array(value, dtype=dtype).reshape(tuple(param.shape))))  # a copy, contiguous, 0-d kept


def read_parameter(param):
    """A MindSpore ``Parameter``'s value as a NumPy array of its own.

    MindSpore 2.7 on CPU: ``Parameter.asnumpy()`` is a view of the buffer the compiled graphs update
    in place (measured: an array taken before a step changed with the step), so a value kept from
    before a step would silently become the value after it."""
    import numpy as np

    return np.array(param.asnumpy(), copy=True)


def parameter_view(param):
    """The NumPy view of a MindSpore ``Parameter``'s live buffer, or None where ``asnumpy()`` copies.

    The other side of :func:`read_parameter`: on CPU (MindSpore 2.7) ``asnumpy()`` is a view of the
    buffer the compiled graphs update in place, so a save can read the graph's weights and moments
    with no copy at all; on a device it is a fresh host copy each time (then None: the caller copies).
    A view changes with the next step: use it before the graph runs again."""
    view = param.asnumpy()
    if view.size == 0 or view.ctypes.data == param.asnumpy().ctypes.data:
        return view
    return None


def synchronize() -> None:
    """Wait until every kernel MindSpore has queued on this process's device has run, copying nothing.

    ``mindspore.runtime.synchronize()`` (2.7) refuses the CPU backend on its *first* call only: it
    logs "CPU device is not supported" and returns without waiting, then waits on every later call.
    Its C++ function (``mindspore._c_expression.synchronize``) waits on every backend, CPU included,
    where one-op-at-a-time (PyNative) kernels run asynchronously too. ``tensor.asnumpy()`` is no
    substitute for a timer: its first call on a fresh graph output takes time of its own (4-8 ms on a
    1024 x 3072 float32 MatMul's product, ~20% of the op, on a 2-core Xeon; later calls on the same
    tensor ~1 ms, and the arrays they return share one buffer)."""
    from mindspore._c_expression import synchronize as _synchronize

    _synchronize()


def report_skipped_step(optimizer, skipped: bool) -> None:
    """Make ``accelerator.optimizer_step_was_skipped`` say whether the last optimizer step was skipped.

    The Hugging Face Trainer steps its LR scheduler only when that is False. accelerate 1.10 reads
    it from each ``AcceleratedOptimizer``'s ``step_was_skipped``, which returns ``_is_overflow``: set
    by ``step()`` only when a ``GradScaler`` is attached, and left alone otherwise, so what is written
    here stands until the next report. ``optimizer``: the Trainer's (wrapped) optimizer; a plain one
    (before ``accelerator.prepare``) has no such flag and nothing to tell."""
    while optimizer is not None:
        if hasattr(optimizer, "step_was_skipped"):
            if not hasattr(optimizer, "_is_overflow"):
                raise RuntimeError(f"{type(optimizer).__name__}.step_was_skipped no longer reads _is_overflow "
                                   "(an accelerate release ms_gpt2 was not written for)")
            optimizer._is_overflow = bool(skipped)
        optimizer = getattr(optimizer, "optimizer", None)


def _install_cpu_addcdiv() -> None:
    cpu = _cpu_table()

    def addcdiv(input, tensor1, tensor2, value=1.0):
        # input + value * tensor1 / tensor2, the torch.addcdiv contract (AdamW's update step).
        quotient = cpu.div(tensor1, tensor2)
        if value != 1:
            quotient = cpu.mul(quotient, value)
        return cpu.add(input, quotient)

    _replace(cpu, "addcdiv", addcdiv)


def _install_cpu_linalg_vector_norm() -> None:
    cpu = _cpu_table()
    original = cpu.linalg_vector_norm

    def linalg_vector_norm(x, ord=2, dim=None, keepdim=False, dtype=None):
        # mindtorch passes dim=None straight to MindSpore's LpNorm, which wants an axis, and
        # truncates ord with int(); torch means "all dimensions" and any real ord.
        if dtype is not None:
            x = cpu.cast(x, dtype)
        if dim is None:
            dims = tuple(range(x.ndim))
        elif isinstance(dim, int):
            dims = (dim,)
        else:
            dims = tuple(dim)
        if x.ndim == 0:
            x, dims = cpu.reshape(x, (1,)), (0,)
        ord = float(ord)
        magnitude = cpu.abs(x)
        if ord == math.inf:
            return cpu.reduce_max(magnitude, dims, keepdim)
        if ord == -math.inf:
            return cpu.neg(cpu.reduce_max(cpu.neg(magnitude), dims, keepdim))
        if ord == 0:
            nonzero = cpu.cast(cpu.not_equal(magnitude, 0), x.dtype)
            return cpu.sum(nonzero, dims, keepdim, None)
        if ord.is_integer() and ord >= 1:
            return original(x, ord, dims, keepdim, None)
        powered = cpu.sum(cpu.pow(magnitude, ord), dims, keepdim, None)
        return cpu.pow(powered, 1.0 / ord)

    _replace(cpu, "linalg_vector_norm", linalg_vector_norm)


def set_generator_offset(generator, offset: int) -> None:
    """Put a mindtorch ``Generator`` at ``offset`` of its current seed's stream (mindtorch has no
    public call for it; ``manual_seed`` puts it at 0, and its CPU kernel never advances it)."""
    import mindspore

    generator._offset.assign_value(mindspore.Tensor(int(offset), mindspore.int64))  # pylint: disable=protected-access


def _install_cpu_seeded_random() -> None:
    """Make CPU random ops draw from the mindtorch Generator they are given.

    mindtorch 0.5.1's CPU table calls MindSpore's random primitives with seed (0, 0) (or NumPy's
    global state) and drops the generator, so ``torch.manual_seed`` changes nothing: sampling
    (``multinomial`` draws through ``rand``), dropout and ``randn`` differ on every run. Each op
    here asks the generator for its (seed, offset), as the NPU table does, and draws from a NumPy
    generator keyed on that pair: same seed, same numbers; each call advances the offset (through
    ``Generator._step``, which the ``generator.step`` shim makes advance).
    """
    import numpy as np
    import mindspore
    import mindtorch

    cpu = _cpu_table()

    step = 12  # what mindtorch's ops advance the offset by per draw

    def as_int(v):
        return int(v.item()) if hasattr(v, "item") else int(v)

    def rng_for(seed, offset):
        return np.random.default_rng([as_int(seed) % 2**64, as_int(offset) % 2**64])

    def from_generator(generator):
        return rng_for(*generator._step(step))  # pylint: disable=protected-access

    def to_tensor(array, dtype):
        tensor = mindspore.Tensor(array)
        return tensor if dtype is None else cpu.cast(tensor, dtype)

    def np_float(dtype):
        return np.float64 if dtype == mindtorch.float64 else np.float32

    def rand(size, generator, dtype):
        return to_tensor(from_generator(generator).random(tuple(size), dtype=np_float(dtype)), dtype)

    def randn(size, generator, dtype):
        return to_tensor(from_generator(generator).standard_normal(tuple(size), dtype=np_float(dtype)), dtype)

    def randint(low, high, shape, generator, dtype):
        return to_tensor(from_generator(generator).integers(low, high, tuple(shape), dtype=np.int64), dtype)

    def normal_float_float(mean, std, size, dtype, generator):
        return to_tensor(from_generator(generator).normal(mean, std, tuple(size)).astype(np_float(dtype)), dtype)

    def normal_tensor_tensor(mean, std, size, dtype, generator):
        return normal_float_float(mean.item(), std.item(), size, dtype, generator)

    def dropout(input, p, seed, offset):  # (seed, offset): mindtorch's dropout took them from the default generator
        keep = rng_for(seed, offset).random(tuple(input.shape)) >= p
        mask = cpu.cast(mindspore.Tensor(keep), input.dtype)
        return cpu.mul(cpu.mul(input, mask), 1.0 / (1.0 - p)), mask

    for name, fn in [("rand", rand), ("randn", randn), ("randint", randint), ("dropout", dropout),
                     ("normal_float_float", normal_float_float),
                     ("normal_tensor_tensor", normal_tensor_tensor)]:
        _replace(cpu, name, fn)


def _install_generator_step_advances() -> None:
    """``Generator._step(n)`` returns (seed, offset) and advances the offset by n, as it is meant to.

    mindtorch's Generator steps through MindSpore 2.7's ``Generator`` primitive, whose PyNative
    ``__call__`` answers the step command by returning its inputs: the offset never moves. Every
    draw then repeated the one before until the next ``manual_seed``: each dropout call had the same
    mask, ``torch.rand`` twice gave the same numbers, sampling's ``multinomial`` the same quantile
    at every token. ``_step`` is done here in Python: read (seed, offset), advance the offset in
    place (the state ``get_state``/``set_state`` and checkpoints see), return copies.
    """
    import mindspore
    from mindtorch._C import Generator

    original = Generator._step  # pylint: disable=protected-access

    def _step(self, step):  # what the primitive's STEP is meant to do, without the primitive
        seed, offset = int(self._seed.item()), int(self._offset.item())
        set_generator_offset(self, offset + int(step))
        # fresh tensors: the caller's (seed, offset) must not alias the generator's own, now advanced
        return mindspore.Tensor(seed, mindspore.int64), mindspore.Tensor(offset, mindspore.int64)

    ORIGINALS.setdefault("Generator._step", original)
    Generator._step = _step  # pylint: disable=protected-access


def _install_cpu_accurate_tanh() -> None:
    """tanh to float32 accuracy: MindSpore's CPU kernel is off by up to 1e-4.

    GPT-2's ``gelu_new`` is built on tanh, so that error reached the logits (2e-4 on a tiny
    GPT-2, against PyTorch's). tanh(x) = expm1(2x) / (expm1(2x) + 2) is exact to ~1.5e-7 with
    MindSpore's expm1 and keeps precision near 0; x is clamped to +-20, where float32 tanh is
    already +-1, so expm1 cannot overflow. Gradients follow through the composed ops.
    """
    cpu = _cpu_table()

    def tanh(input):
        e = cpu.expm1(cpu.mul(cpu.clamp_scalar(input, -20.0, 20.0), 2.0))
        return cpu.div(e, cpu.add(e, 2.0))

    _replace(cpu, "tanh", tanh)


def _install_cpu_arg_extrema_over_all_dims() -> None:
    """``argmax()``/``argmin()`` with no dim: torch means the index into the flattened tensor."""
    cpu = _cpu_table()

    def over_all(original):
        def arg_extremum(input, axis, keep_dims):
            if axis is not None:
                return original(input, axis, keep_dims)
            flat = original(cpu.reshape(input, (-1,)), 0, False)
            return cpu.reshape(flat, (1,) * input.ndim) if keep_dims else flat
        return arg_extremum

    _replace(cpu, "argmax", over_all(cpu.argmax))
    _replace(cpu, "argmin", over_all(cpu.argmin))


def _install_serialization_safe_globals() -> None:
    """``torch.serialization.safe_globals`` for transformers' resume path.

    mindtorch reports torch 2.7, so transformers 4.56 wraps the ``torch.load`` of a checkpoint's
    ``rng_state.pth`` in ``safe_globals(allowlist)``, which mindtorch 0.5.1 lacks: resuming
    crashes. mindtorch's ``load`` has no weights-only unpickler for an allowlist to widen, so the
    faithful equivalent is a context manager that records the allowlist and changes nothing.
    """
    import contextlib

    from mindtorch import serialization

    allowed: list = []

    @contextlib.contextmanager
    def safe_globals(safe_globals_list):
        allowed.extend(safe_globals_list)
        yield

    ORIGINALS.setdefault("serialization.safe_globals", getattr(serialization, "safe_globals", None))
    serialization.safe_globals = safe_globals


def _install_cpu_same_device_move() -> None:
    """``tensor.to(device)`` onto the device it is already on returns the tensor itself.

    mindtorch 0.5.1's ``Tensor._move_to`` copies every CPU tensor through NumPy when asked for
    ``cpu``, even when it is already there, which cuts it out of the autograd graph. Hugging Face
    GPT-2 adds its position embeddings as ``wpe(position_ids).to(inputs_embeds.device)``, so on CPU
    ``wpe`` never received a gradient and never trained. PyTorch returns ``self`` for a same-device
    ``to``; so does this. Moves to another device keep mindtorch's code.
    """
    import mindspore
    from mindtorch import _tensor

    classes = [mindspore.Tensor] + ([_tensor.StubTensor] if hasattr(_tensor.StubTensor, "_move_to") else [])
    for cls in classes:
        original = cls._move_to

        def _move_to(self, device, non_blocking=False, _original=original):
            if device.type == "cpu" and self.device.type == "cpu" and device.index in (None, self.device.index):
                return self
            return _original(self, device, non_blocking)

        ORIGINALS.setdefault(f"{cls.__name__}._move_to", original)
        cls._move_to = _move_to


def save_safetensors_streamed(tensors: dict, filename, metadata: dict | None = None) -> None:
    """The bytes ``safetensors.numpy.save_file`` writes for ``tensors`` (name -> a mindtorch/MindSpore
    tensor or a NumPy array), written one tensor at a time.

    mindnlp 0.5.1's ``safetensors.torch.save_file`` (which ``transformers``' ``save_pretrained`` calls)
    converts every tensor with ``asnumpy()`` and hands them to ``safetensors.numpy.save_file``, which
    first turns *every* tensor into a ``bytes`` copy and only then writes: one whole model's size of
    transient memory on every save (408 MB for GPT-2 small), the largest part of a checkpoint's peak.
    Here the header comes from safetensors itself (its ``serialize`` of zero-size stand-ins gives the
    order, the metadata and the layout; shapes and offsets are then filled in), and each tensor is
    converted and written in that order, so at most one tensor's host copy exists at a time (none
    where ``asnumpy()`` is a view, as on CPU). Same file, byte for byte (``tests/test_compat.py``).
    """
    import json
    import sys

    import numpy as np
    from safetensors import serialize

    def as_array(value) -> np.ndarray:
        return np.ascontiguousarray(value.asnumpy() if hasattr(value, "asnumpy") else value)

    def dtype_of(value) -> np.dtype:
        if not hasattr(value, "asnumpy"):
            return np.asarray(value).dtype
        import mindspore

        try:
            return np.dtype(mindspore.dtype_to_nptype(value.dtype))
        except (KeyError, TypeError):  # a dtype MindSpore does not map (bfloat16): ask the array, one at a time
            return value.asnumpy().dtype

    info = {name: (dtype_of(value), tuple(int(d) for d in value.shape)) for name, value in tensors.items()}
    stand_ins = {name: {"dtype": dtype.name, "shape": [0], "data": b""} for name, (dtype, _) in info.items()}
    layout = bytes(serialize(stand_ins, metadata=metadata))
    header = json.loads(layout[8:8 + int.from_bytes(layout[:8], "little")])
    offset = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info[name]
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entry["shape"], entry["data_offsets"] = list(shape), [offset, offset + size]
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to a multiple of 8 with spaces
    with open(filename, "wb") as out:
        out.write(len(text).to_bytes(8, "little"))
        out.write(text)
        for name in header:
            if name == "__metadata__":
                continue
            array = as_array(tensors[name])
            if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder != "little"):
                array = array.byteswap(inplace=False)  # as safetensors.numpy does: the file is little-endian
            out.write(array.reshape(-1).view(np.uint8).data)
            del array


def _install_streamed_safetensors_save() -> None:
    """``save_pretrained(safe_serialization=True)`` writes tensor by tensor (:func:`save_safetensors_streamed`).

    Replaces mindnlp 0.5.1's ``safe_save_file`` where transformers and ``safetensors.torch`` hold it
    (the Trainer's checkpoints, ``model/``, every ``save_pretrained``); a binding that is not
    mindnlp's function (a later release's own) is left alone."""
    import safetensors.torch
    import transformers.modeling_utils
    from mindnlp.utils import safetensors_patch

    original = safetensors_patch.safe_save_file
    ORIGINALS.setdefault("safetensors.save_file", original)

    def safe_save_file(tensor_dict, filename, metadata=None):
        return save_safetensors_streamed(tensor_dict, filename, metadata)

    for module, name in ((safetensors.torch, "save_file"), (transformers.modeling_utils, "safe_save_file")):
        if getattr(module, name, None) is original:
            setattr(module, name, safe_save_file)


SHIMS: tuple[Shim, ...] = (
    Shim("cpu.addcdiv", "AdamW's update calls torch.addcdiv; the CPU table has no entry",
         _install_cpu_addcdiv),
    Shim("cpu.linalg_vector_norm", "clip_grad_norm_/torch.norm fail with dim=None on CPU",
         _install_cpu_linalg_vector_norm),
    Shim("cpu.seeded_random", "CPU rand/randn/randint/normal/dropout ignore the Generator and seed",
         _install_cpu_seeded_random),
    Shim("generator.step", "MindSpore 2.7's Generator op never advances the offset in PyNative: every random "
         "draw (dropout masks, rand, sampling) repeated the previous one", _install_generator_step_advances),
    Shim("cpu.tanh", "MindSpore's CPU tanh kernel errs by 1e-4, which reached GPT-2's logits via gelu_new",
         _install_cpu_accurate_tanh),
    Shim("cpu.arg_extrema", "argmax()/argmin() without dim fail on CPU (axis=None)",
         _install_cpu_arg_extrema_over_all_dims),
    Shim("cpu.same_device_move", "tensor.to(its own device) copies through NumPy on CPU, cutting the gradient "
         "(GPT-2's position embeddings never trained)", _install_cpu_same_device_move),
    Shim("serialization.safe_globals", "Trainer's resume wraps torch.load in it; mindtorch lacks it",
         _install_serialization_safe_globals),
    Shim("safetensors.streamed_save", "mindnlp's safetensors save holds a bytes copy of every tensor at once "
         "(a model's size of memory on every checkpoint)", _install_streamed_safetensors_save),
)

_applied: list[str] = []


# --------------------------------------------------------------------------------------------------
# Before ``import mindnlp``: its diffusers port, loaded only when something asks for it
# --------------------------------------------------------------------------------------------------

def defer_mindnlp_diffusers(versions: dict[str, str] | None = None) -> bool:
    """mindnlp 0.5.1's ``__init__`` ends with ``from . import diffusers``, which imports Hugging Face
    ``diffusers`` and all its pipelines: 1.7 s of every process's 5 s start-up (``python -X importtime``,
    2-core Xeon), for a package ms_gpt2 never uses. Call before ``import mindnlp``: ``mindnlp.diffusers``
    becomes a placeholder module whose first attribute access (``mindnlp.diffusers.X``,
    ``from mindnlp.diffusers import X``) imports the real package, so user code that wants it still gets
    it. One difference remains: mindnlp's port is what patches ``diffusers``' ``from_pretrained`` for
    MindSpore, so a process that imports ``diffusers`` directly must touch ``mindnlp.diffusers`` first.
    Returns whether the placeholder was installed (only on the versions it was written for, and only
    before mindnlp is imported)."""
    import sys
    import types

    if "mindnlp" in sys.modules or (versions or installed_versions()) != WRITTEN_FOR:
        return False
    name = "mindnlp.diffusers"

    class Placeholder(types.ModuleType):
        def __getattr__(self, attr):
            if attr.startswith("__") and attr.endswith("__"):
                raise AttributeError(attr)  # the import system's probes (__spec__, __path__, ...) load nothing
            import importlib

            parent = sys.modules["mindnlp"]
            if sys.modules.get(name) is self:
                del sys.modules[name]
            real = importlib.import_module(name)
            parent.diffusers = real
            return getattr(real, attr)

    placeholder = Placeholder(name, "placeholder: mindnlp.diffusers is imported on first use (ms_gpt2 compat)")
    import importlib.machinery
    import importlib.util

    parent = importlib.util.find_spec("mindnlp")  # a top-level lookup imports nothing
    if parent is not None and parent.submodule_search_locations:
        placeholder.__spec__ = importlib.machinery.PathFinder.find_spec(name, parent.submodule_search_locations)
    sys.modules[name] = placeholder
    return True


def apply(versions: dict[str, str] | None = None) -> list[str]:
    """Install the shims once per process; return the names of those in force.

    ``versions`` defaults to what is installed; tests pass another to prove the guard refuses.
    """
    versions = versions or installed_versions()
    if versions != WRITTEN_FOR:
        warnings.warn(
            f"ms_gpt2 compat shims were written for {WRITTEN_FOR}, found {versions}: "
            f"not applying {[s.name for s in SHIMS]}. CPU training may fail; see README.",
            CompatWarning,
            stacklevel=2,
        )
        return []
    for shim in SHIMS:
        if shim.name not in _applied:
            shim.install()
            _applied.append(shim.name)
            log.debug("compat shim %s applied: %s", shim.name, shim.why)
    return list(_applied)
