"""Validation of adapter files before any engine sees them.

``validate_weight_file`` checks one weight file (format, truncation, pickle, size cap, sha256) for
text and image LoRAs alike; ``validate_text_lora`` also checks a PEFT LoRA against the base model
(config, rank, base, target modules, tensor names and shapes). Reads headers only: no torch.
Every failure is an InvalidAdapterError whose message names the adapter and the rule.
"""

import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from adapters.errors import InvalidAdapterError
from adapters.regex_guard import MAX_REPEATS, UnsafeRegexError, safe_compile
from adapters.spec import AdapterSpec

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20  # what the safetensors library itself accepts
# PEFT's saved key format (the default adapter's name is dropped on save).
_LORA_KEY_RE = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


_Number = StrictInt | StrictFloat
MAX_PATTERN_KEYS = 32  # rank_pattern / alpha_pattern entries: each is matched against every module
_Names = StrictStr | list[StrictStr]


class LoraConfigFields(BaseModel):
    """The types of the adapter_config.json fields we read or PEFT / vLLM act on; other PEFT
    fields pass through unchecked. The file is untrusted: a wrong type is a 422, not a 500."""

    model_config = ConfigDict(extra="allow")

    peft_type: StrictStr | None = None
    r: StrictInt = Field(ge=1)
    lora_alpha: _Number | None = None
    target_modules: _Names | None = Field(default=None, max_length=4096)
    exclude_modules: _Names | None = None
    rank_pattern: dict[StrictStr, StrictInt] | None = Field(
        default=None, max_length=MAX_PATTERN_KEYS
    )
    alpha_pattern: dict[StrictStr, _Number] | None = Field(
        default=None, max_length=MAX_PATTERN_KEYS
    )
    base_model_name_or_path: StrictStr | None = None
    modules_to_save: list[StrictStr] | None = None
    layers_to_transform: StrictInt | list[StrictInt] | None = None
    layers_pattern: _Names | None = None
    lora_dropout: _Number | None = None
    bias: StrictStr | None = None
    fan_in_fan_out: StrictBool | None = None
    use_rslora: StrictBool | None = None
    use_dora: StrictBool | None = None
    inference_mode: StrictBool | None = None
    task_type: StrictStr | None = None
    revision: StrictStr | None = None


@dataclass(frozen=True)
class BaseModelInfo:
    """What an adapter must fit; built by the engine from the base model. Plain data."""

    name: str  # served base id
    refs: frozenset[str]  # accepted base_model_name_or_path values (model path, hub id, ...)
    modules: Mapping[str, tuple[int, int]]  # Linear module name -> (in_features, out_features)

    @classmethod
    def from_module(cls, name: str, refs: set[str] | frozenset[str], model: Any) -> "BaseModelInfo":
        """From a torch model (a ``meta``-device copy will do): every module with
        ``in_features`` / ``out_features``, i.e. the Linears LoRA can target."""
        modules = {
            n: (m.in_features, m.out_features)
            for n, m in model.named_modules()
            if isinstance(getattr(m, "in_features", None), int)
            and isinstance(getattr(m, "out_features", None), int)
        }
        return cls(name=name, refs=frozenset(refs), modules=modules)


@dataclass(frozen=True)
class ValidationRules:
    max_rank: int
    allow_pickle: bool = False
    max_bytes: int = 2**31
    check_base_model: bool = True


@dataclass
class ValidatedAdapter:
    """A checked adapter; satisfies the pool's ``Prepared`` (it has ``size_bytes``)."""

    spec: AdapterSpec  # a copy with rank and size_bytes filled in
    path: Path
    rank: int
    size_bytes: int


def _fail(spec: AdapterSpec, rule: str) -> InvalidAdapterError:
    return InvalidAdapterError(f"adapter '{spec.name}': {rule}")


def validate_weight_file(spec: AdapterSpec, path: Path, rules: ValidationRules) -> int:
    """Check one weight file; return its size in bytes."""
    _weight_header(spec, path, rules)
    return path.stat().st_size


def _weight_header(
    spec: AdapterSpec, path: Path, rules: ValidationRules
) -> dict[str, dict[str, Any]] | None:
    """The safetensors header (tensor name -> dtype, shape, offsets); None for an allowed pickle."""
    if not path.is_file():
        raise _fail(spec, f"weight file '{path.name}' is missing")
    size = path.stat().st_size
    if size > rules.max_bytes:
        raise _fail(spec, f"weight file is {size} bytes, over the cap of {rules.max_bytes} bytes")
    header: dict[str, dict[str, Any]] | None = None
    if path.suffix in PICKLE_SUFFIXES:
        if not rules.allow_pickle:
            raise _fail(
                spec,
                f"'{path.name}' is a pickled file, refused because loading it can run code "
                "(convert it to safetensors, or allow_pickle in the deployment)",
            )
    elif path.suffix == ".safetensors":
        header = _safetensors_header(spec, path, size)
    else:
        raise _fail(spec, f"weight file '{path.name}' is not a .safetensors file")
    if spec.sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(2**20):
                digest.update(chunk)
        if digest.hexdigest() != spec.sha256:
            raise _fail(
                spec,
                f"sha256 of '{path.name}' is {digest.hexdigest()}, expected {spec.sha256}",
            )
    return header


def _safetensors_header(spec: AdapterSpec, path: Path, size: int) -> dict[str, dict[str, Any]]:
    """Parse the 8-byte length + JSON header by hand; check every tensor lies inside the file."""
    corrupt = f"'{path.name}' is not a valid safetensors file"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _fail(spec, f"{corrupt} (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise _fail(spec, f"{corrupt} (header length {n} does not fit a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail(spec, f"{corrupt} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail(spec, f"{corrupt} (header is not a JSON object)")
    header.pop("__metadata__", None)
    data_bytes, end = size - 8 - n, 0
    for name, t in header.items():
        try:
            dtype, shape, (begin, stop) = t["dtype"], t["shape"], t["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            nbytes = count * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise _fail(spec, f"{corrupt} (bad entry for tensor '{name}')") from None
        if stop - begin != nbytes or begin < 0:
            raise _fail(spec, f"{corrupt} (tensor '{name}' offsets do not match its shape)")
        end = max(end, stop)
    if end > data_bytes:
        raise _fail(
            spec,
            f"'{path.name}' is truncated: tensors need {end} data bytes, file has {data_bytes}",
        )
    return header


def _matches(target: str, module: str) -> bool:
    """PEFT's rule for one entry of a target_modules list: the full name or a '.'-suffix."""
    return module == target or module.endswith("." + target)


def validate_text_lora(
    spec: AdapterSpec, path: Path, base: BaseModelInfo, rules: ValidationRules
) -> ValidatedAdapter:
    """Check a PEFT LoRA directory against ``base`` and ``rules``."""
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise _fail(spec, "adapter_config.json is missing")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(spec, f"adapter_config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise _fail(spec, "adapter_config.json is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise _fail(
            spec, f"peft_type is {config.get('peft_type')!r}; only LORA adapters are served"
        )
    if not isinstance(config.get("r"), int) or isinstance(config.get("r"), bool):
        raise _fail(
            spec, f"rank r={config.get('r')!r} in adapter_config.json is not a positive integer"
        )
    fields = _typed_config(spec, config)
    patterns = _guarded_patterns(spec, fields)

    r = fields.r
    rank_pattern: dict[str, int] = fields.rank_pattern or {}
    if any(v < 1 for v in rank_pattern.values()):
        raise _fail(spec, "rank_pattern values in adapter_config.json must be positive integers")
    rank = max([r, *rank_pattern.values()])
    if rank > rules.max_rank:
        raise _fail(spec, f"rank {rank} exceeds this deployment's max_lora_rank {rules.max_rank}")

    if rules.check_base_model:
        declared = config.get("base_model_name_or_path")
        if declared not in base.refs:
            raise _fail(
                spec,
                f"it was trained for base model {declared!r}, but this deployment serves "
                f"'{base.name}'" + _accepted(base.refs),
            )

    targets = fields.target_modules
    if not targets:
        raise _fail(spec, "adapter_config.json has no target_modules")
    if isinstance(targets, str):
        if targets != "all-linear" and not any(
            patterns["target_modules"].fullmatch(m) for m in base.modules
        ):
            raise _fail(spec, f"target_modules regex {targets!r} matches no module of the base")
    else:
        for t in targets:
            if not any(_matches(t, m) for m in base.modules):
                raise _fail(spec, f"target module {t!r} matches no module of the base model")

    weights = path / "adapter_model.safetensors"
    if not weights.is_file() and (path / "adapter_model.bin").is_file():
        weights = path / "adapter_model.bin"
    if not weights.is_file():
        raise _fail(spec, "adapter_model.safetensors is missing")
    header = _weight_header(spec, weights, rules)
    if header is not None:
        _check_tensors(
            spec,
            header,
            base,
            r,
            {patterns[f"rank_pattern[{k}]"]: v for k, v in rank_pattern.items()},
        )
    size = weights.stat().st_size
    return ValidatedAdapter(
        spec=spec.model_copy(update={"rank": rank, "size_bytes": size}),
        path=path,
        rank=rank,
        size_bytes=size,
    )


def _accepted(refs: frozenset[str]) -> str:
    """The accepted base names for a message, leaving out local paths (callers see messages)."""
    names = sorted(r for r in refs if not r.startswith(("/", ".", "~")) and "\\" not in r)
    return f" (accepted: {', '.join(names)})" if names else ""


def _typed_config(spec: AdapterSpec, config: dict[str, Any]) -> LoraConfigFields:
    try:
        return LoraConfigFields.model_validate(config)
    except PydanticValidationError as e:
        err = e.errors()[0]
        value = repr(err["input"])
        value = value if len(value) <= 40 else value[:37] + "..."
        raise _fail(
            spec, f"adapter_config.json field '{err['loc'][0]}': {err['msg']} (got {value})"
        ) from None


def _guarded_patterns(spec: AdapterSpec, fields: LoraConfigFields) -> dict[str, re.Pattern[str]]:
    r"""Compile every regex the adapter's config carries, refusing unsafe ones (regex_guard).
    rank_pattern / alpha_pattern keys are compiled as PEFT uses them: ``(.*\.)?<key>$``."""
    found: dict[str, str] = {}
    for name in ("target_modules", "exclude_modules"):
        value = getattr(fields, name)
        if isinstance(value, str) and value != "all-linear":
            found[name] = value
    for name in ("rank_pattern", "alpha_pattern"):
        for key in getattr(fields, name) or {}:
            found[f"{name}[{key}]"] = rf"(.*\.)?(?:{key})$"
    layers = fields.layers_pattern
    for i, value in enumerate([layers] if isinstance(layers, str) else layers or []):
        found[f"layers_pattern[{i}]"] = value
    out = {}
    for name, pattern in found.items():
        try:
            out[name] = safe_compile(pattern, max_repeats=MAX_REPEATS)
        except UnsafeRegexError as e:
            shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
            raise _fail(spec, f"adapter_config.json {name}: regex {shown!r} {e}") from None
    return out


def _check_tensors(
    spec: AdapterSpec,
    header: dict[str, dict[str, Any]],
    base: BaseModelInfo,
    r: int,
    rank_pattern: Mapping[re.Pattern[str], int],
) -> None:
    """Every tensor is lora_A / lora_B of a base Linear, with shapes (r, in) and (out, r)."""
    if not header:
        raise _fail(spec, "adapter_model.safetensors holds no tensors")
    seen: dict[str, set[str]] = {}
    for key, t in header.items():
        m = _LORA_KEY_RE.match(key)
        if m is None:
            raise _fail(
                spec,
                f"tensor '{key}' is not a LoRA weight "
                "(expected base_model.model.<module>.lora_A.weight / lora_B.weight)",
            )
        module, ab = m["module"], m["ab"]
        if module not in base.modules:
            raise _fail(spec, f"tensor '{key}' is for module '{module}', which the base lacks")
        fan_in, fan_out = base.modules[module]
        want_r = next((v for k, v in rank_pattern.items() if k.match(module)), r)
        shape = list(t["shape"])
        if len(shape) == 2 and (shape[1] == fan_in if ab == "A" else shape[0] == fan_out):
            got_r = shape[0] if ab == "A" else shape[1]
            if got_r != want_r:
                raise _fail(
                    spec,
                    f"tensor '{key}' has rank {got_r}, but adapter_config.json says r={want_r}",
                )
        else:
            want = [want_r, fan_in] if ab == "A" else [fan_out, want_r]
            raise _fail(
                spec,
                f"tensor '{key}' has shape {shape}, expected {want} for module '{module}'",
            )
        seen.setdefault(module, set()).add(ab)
    for module, parts in seen.items():
        if parts != {"A", "B"}:
            missing = "lora_B" if "A" in parts else "lora_A"
            raise _fail(spec, f"module '{module}' has no {missing} tensor")
