"""Golden vectors: the reference's results on a few cases, as files any language can read.

    python -m lfq.conformance.golden --write      # regenerate conformance/golden/
    python -m lfq.conformance.golden --check      # regenerate in memory, compare bit for bit

`golden/manifest.json` lists the cases (config, input dtype, shapes, the arrays
of each file and what they mean) and carries `lfq.SPEC_VERSION`; each case is
one `.npz` file (a zip of `.npy` arrays; NumPy's `np.load` reads it, other
languages read the zip and the documented `.npy` header). docs/conformance.md
describes the format. The files are written deterministically (fixed zip
timestamps, sorted entries), so regenerating gives the same arrays bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import zipfile

import numpy as np

import lfq
from lfq.conformance import cases as case_table
from lfq.conformance import checks

__all__ = ["GOLDEN_CASES", "FORMAT_VERSION", "generate", "golden_dir", "load", "verify", "write"]

#: Version of the file layout described in docs/conformance.md.
FORMAT_VERSION = 1
#: (case name, input dtype) of every golden file.
GOLDEN_CASES = (
    ("single-token-d1", "float32"),
    ("ragged-d8-c2", "float32"),
    ("mask-all-false", "float32"),
    ("edges-large-nan-masked", "float32"),
    ("extremes-nan", "float16"),
    ("image-d10", "bfloat16"),
    ("channel-first-d5-c2", "float64"),
    ("lsb-d12-c4", "float32"),
    ("tau-1e3", "float32"),
    ("spherical-clamp-tanh", "float32"),
)

# check name -> (array name in the file, meaning)
_ARRAYS = {
    "quantize": ("codes", "quantize(z) = lfq(z).codes, float64 +-m: round once to the input dtype"),
    "codes_to_indices": ("indices", "codes_to_indices(z), int64 [..., C]"),
    "entropy.per_sample_entropy": ("per_sample_entropy", "scalar, nats"),
    "entropy.batch_entropy": ("batch_entropy", "scalar, nats"),
    "commitment_loss": ("commitment_loss", "scalar"),
    "lfq.aux_loss": ("aux_loss", "scalar"),
    "code_usage.fraction_used": ("fraction_used", "code_usage(indices, mask).fraction_used, [C]"),
    "code_usage.perplexity": ("perplexity", "code_usage(indices, mask).perplexity, [C]"),
    "vjp.per_sample_entropy": ("grad_per_sample_entropy", "d per_sample_entropy / dz, z's shape"),
    "vjp.batch_entropy": ("grad_batch_entropy", "d batch_entropy / dz"),
    "vjp.commitment_loss": ("grad_commitment_loss", "d commitment_loss / dz"),
    "vjp.aux_loss": ("grad_aux_loss", "d aux_loss / dz"),
    "vjp.codes": ("grad_codes", "vjp of the straight-through codes with `cotangent`"),
}


def golden_dir() -> str:
    """The package's golden folder (conformance/golden, installed as lfq/conformance/golden)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def _file_name(name: str, dtype: str) -> str:
    return f"{name}.{dtype}.npz"


def generate() -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """`(manifest, {file name: {array name: array}})` computed from the reference."""
    entries, files = [], {}
    for name, dtype in GOLDEN_CASES:
        case = case_table.get(name)
        with np.errstate(all="ignore"):
            o = checks.oracle(case, dtype)
        arrays = {"z": o.z.astype(np.float64), "cotangent": o.cotangent.astype(np.float64)}
        if o.mask is not None:
            arrays["mask"] = o.mask
        meanings = {"z": f"input features, float64 values exactly representable in {dtype}",
                    "cotangent": "upstream gradient of the codes for grad_codes",
                    "mask": "bool token mask (True = counts in the losses)"}
        for check, (array, meaning) in _ARRAYS.items():
            if check in o.values:
                arrays[array] = np.asarray(o.values[check])
                meanings[array] = meaning
        file = _file_name(name, dtype)
        files[file] = arrays
        entries.append({
            "name": name, "file": file, "input_dtype": dtype, "seed": case.seed, "note": case.note,
            "config": dataclasses.asdict(case.cfg),
            "shape": list(case.shape),
            "skipped": dict(case.skip),
            "arrays": {k: {"dtype": v.dtype.name, "shape": list(v.shape), "meaning": meanings[k]}
                       for k, v in sorted(arrays.items())},
        })
    manifest = {
        "spec_version": lfq.SPEC_VERSION,
        "format_version": FORMAT_VERSION,
        "generator": "python -m lfq.conformance.golden --write",
        "oracle": "lfq.reference on the input cast to float64 (exact), all outputs float64",
        "tolerances": {dtype: {kind: dataclasses.asdict(t) for kind, t in kinds.items()}
                       for dtype, kinds in case_table.DEFAULT_TOLERANCES.items()},
        "cases": entries,
    }
    return manifest, files


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive with fixed timestamps and sorted entries (the same bytes every time)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def write(directory: str | None = None) -> list[str]:
    """Write the manifest and every `.npz` into `directory` (default: the package's); returns the paths."""
    directory = directory or golden_dir()
    os.makedirs(directory, exist_ok=True)
    manifest, files = generate()
    paths = []
    for file, arrays in files.items():
        path = os.path.join(directory, file)
        with open(path, "wb") as handle:
            handle.write(_npz_bytes(arrays))
        paths.append(path)
    path = os.path.join(directory, "manifest.json")
    with open(path, "w") as handle:
        handle.write(_manifest_text(manifest))
    return paths + [path]


def load(directory: str | None = None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """`(manifest, {file: {array: array}})` as stored in `directory` (default: the package's)."""
    directory = directory or golden_dir()
    with open(os.path.join(directory, "manifest.json")) as handle:
        manifest = json.load(handle)
    files = {}
    for entry in manifest["cases"]:
        with np.load(os.path.join(directory, entry["file"]), allow_pickle=False) as data:
            files[entry["file"]] = {key: data[key] for key in data.files}
    return manifest, files


def verify(directory: str | None = None) -> list[str]:
    """Differences between the stored golden files and a fresh generation (empty: bit for bit equal)."""
    stored_manifest, stored = load(directory)
    manifest, fresh = generate()
    problems = []
    if _manifest_text(stored_manifest) != _manifest_text(manifest):
        problems.append("manifest.json differs from a fresh generation")
    for file in sorted(set(stored) | set(fresh)):
        if file not in stored or file not in fresh:
            problems.append(f"{file}: {'missing' if file not in stored else 'no longer generated'}")
            continue
        for key in sorted(set(stored[file]) | set(fresh[file])):
            a, b = stored[file].get(key), fresh[file].get(key)
            if a is None or b is None:
                problems.append(f"{file}:{key}: present in only one of stored/fresh")
            elif a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                detail = ""
                if a.dtype == b.dtype and a.shape == b.shape and a.dtype.kind == "f":
                    with np.errstate(invalid="ignore"):
                        detail = f" (max |difference| {np.nanmax(np.abs(a - b)) if a.size else 0:.3g})"
                problems.append(f"{file}:{key}: differs bitwise{detail}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfq.conformance.golden", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the golden files")
    action.add_argument("--check", action="store_true", help="compare the stored files with a fresh generation")
    parser.add_argument("--dir", default=None, help="folder (default: the package's golden/)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.dir):
            print(path)
        return 0
    problems = verify(args.dir)
    for problem in problems:
        print(problem)
    print("golden files reproduce bit for bit" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
