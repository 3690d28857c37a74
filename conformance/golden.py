"""Golden vectors: the reference's results on a few cases, as files any language can read.

    python -m lfq.conformance.golden --write      # regenerate conformance/golden/
    python -m lfq.conformance.golden --check      # regenerate in memory and compare

`golden/manifest.json` lists the cases (config, input dtype, shapes, the arrays
of each file and what they mean) and carries `lfq.SPEC_VERSION`; each case is
one `.npz` file (a zip of `.npy` arrays; NumPy's `np.load` reads it, other
languages read the zip and the documented `.npy` header). docs/conformance.md
describes the format. The files are written deterministically (fixed zip
timestamps, sorted entries): on one machine, writing twice gives the same bytes.

Across machines the float64 results (losses, gradients, usage) are not bitwise
portable: they come from BLAS products whose summation order depends on the
kernel the BLAS library picks for the CPU. So `verify` compares the integer and
bool arrays and the exactly representable inputs and codes bit for bit, and the
float64 results within `REGENERATION_TOLERANCE` (recorded in the manifest).
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
from lfq.conformance import cases as case_table
from lfq.conformance import checks, compare
from lfq.conformance.cases import Tolerance

import lfq

__all__ = [
    "GOLDEN_CASES",
    "FORMAT_VERSION",
    "REGENERATION_TOLERANCE",
    "Verification",
    "check",
    "generate",
    "golden_dir",
    "load",
    "verify",
    "write",
]

#: Version of the file layout described in docs/conformance.md.
FORMAT_VERSION = 1

#: How closely a regeneration must reproduce the stored float64 results (every
#: float64 array but z, cotangent and codes, which are compared bit for bit like the
#: integer and bool arrays). The results are sums of products computed by BLAS
#: (matmul/einsum in lfq.reference and lfq.factorized), and OpenBLAS picks its
#: kernels, hence the summation order, by CPU (OPENBLAS_CORETYPE overrides it):
#: between its SkylakeX, Haswell (also Zen), Sandybridge, Nehalem and Katmai kernels
#: the gradients differ by up to 1.8e-14 of their largest entry (0.018 x this bound;
#: the losses and usage were bit for bit). 1e-12 leaves a margin of 50 (it is about
#: 4500 ulps) and is still 1000 times tighter than the float64 conformance tolerance
#: of gradients, so a change of the reference's arithmetic shows up.
#: Gradients are compared after dividing by their largest stored |value| (atol reads
#: as a fraction of it), as in the conformance suite; see `compare.close`.
REGENERATION_TOLERANCE = Tolerance(rtol=1e-12, atol=1e-12)
#: Float64 arrays that hold exact values (inputs exactly representable in the input
#: dtype, codes +-m): compared bit for bit.
_EXACT_FLOATS = ("z", "cotangent", "codes")
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
        meanings = {
            "z": f"input features, float64 values exactly representable in {dtype}",
            "cotangent": "upstream gradient of the codes for grad_codes",
            "mask": "bool token mask (True = counts in the losses)",
        }
        for check, (array, meaning) in _ARRAYS.items():
            if check in o.values:
                arrays[array] = np.asarray(o.values[check])
                meanings[array] = meaning
        file = _file_name(name, dtype)
        files[file] = arrays
        entries.append(
            {
                "name": name,
                "file": file,
                "input_dtype": dtype,
                "seed": case.seed,
                "note": case.note,
                "config": dataclasses.asdict(case.cfg),
                "shape": list(case.shape),
                "skipped": dict(case.skip),
                "arrays": {
                    k: {"dtype": v.dtype.name, "shape": list(v.shape), "meaning": meanings[k]}
                    for k, v in sorted(arrays.items())
                },
            }
        )
    manifest = {
        "spec_version": lfq.SPEC_VERSION,
        "format_version": FORMAT_VERSION,
        "generator": "python -m lfq.conformance.golden --write",
        "oracle": "lfq.reference on the input cast to float64 (exact), all outputs float64",
        "regeneration": {
            "bitwise": "integer and bool arrays, and " + ", ".join(_EXACT_FLOATS),
            "tolerance": dataclasses.asdict(REGENERATION_TOLERANCE),
            "normalized": "grad_* arrays: divided by their largest stored |value| first",
            "reason": "the other float64 results come from BLAS products whose summation order "
            "depends on the CPU's BLAS kernels, so they are not bitwise portable",
        },
        "tolerances": {
            dtype: {kind: dataclasses.asdict(t) for kind, t in kinds.items()}
            for dtype, kinds in case_table.DEFAULT_TOLERANCES.items()
        },
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


def _bitwise(key: str, array: np.ndarray) -> bool:
    """Whether `key` must regenerate bit for bit (integers, bools, exact inputs and codes)."""
    return array.dtype.kind != "f" or key in _EXACT_FLOATS


@dataclasses.dataclass
class Verification:
    """Result of comparing stored golden files with a fresh generation.

    Attributes:
        problems: one message per difference (empty: the files reproduce).
        arrays: number of arrays compared.
        inexact: float64 results that differ bitwise but lie within the tolerance.
        worst_ratio: largest error / allowed error over the float64 results (> 1 fails).
        worst: `file:array` where `worst_ratio` occurs ("" when every result is bitwise equal).
        max_difference: largest |fresh - stored| over the float64 results (gradients
            divided by their largest stored |value|).
    """

    problems: list[str]
    arrays: int = 0
    inexact: int = 0
    worst_ratio: float = 0.0
    worst: str = ""
    max_difference: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        t = REGENERATION_TOLERANCE
        bound = f"rtol {t.rtol:g}, atol {t.atol:g} (gradients relative to their max|value|)"
        if not self.ok:
            return (
                f"{len(self.problems)} golden differences (got: the fresh generation, want: the stored "
                f"file; float64 results may differ by {bound})"
            )
        largest = (
            (
                f", largest difference {self.max_difference:.3g} ({self.worst_ratio:.3g} x the allowed "
                f"error, at {self.worst})"
            )
            if self.worst
            else ""
        )
        return (
            f"golden files reproduce ({self.arrays} arrays): integer arrays, inputs and codes bit for bit; "
            f"float64 results within {bound}, {self.inexact} of them not bit for bit{largest}"
        )


def check(directory: str | None = None) -> Verification:
    """Compare the stored golden files (default: the package's) with a fresh generation."""
    stored_manifest, stored = load(directory)
    manifest, fresh = generate()
    result = Verification([])
    if _manifest_text(stored_manifest) != _manifest_text(manifest):
        result.problems.append("manifest.json differs from a fresh generation")
    for file in sorted(set(stored) | set(fresh)):
        if file not in stored or file not in fresh:
            result.problems.append(f"{file}: {'missing' if file not in stored else 'no longer generated'}")
            continue
        for key in sorted(set(stored[file]) | set(fresh[file])):
            want, got = stored[file].get(key), fresh[file].get(key)
            what = f"{file}:{key}"
            if want is None or got is None:
                result.problems.append(f"{what}: present in only one of stored/fresh")
                continue
            result.arrays += 1
            if (want.dtype, want.shape) != (got.dtype, got.shape):
                result.problems.append(
                    f"{what}: stored {want.dtype.name}{list(want.shape)}, fresh {got.dtype.name}{list(got.shape)}"
                )
            elif _bitwise(key, want):
                if want.tobytes() != got.tobytes():
                    result.problems.append(_bitwise_message(what, got, want))
            elif want.tobytes() != got.tobytes():
                _compare_result(result, what, got, want, normalize=key.startswith("grad_"))
    return result


def _bitwise_message(what: str, got: np.ndarray, want: np.ndarray) -> str:
    rows = (want.size, want.itemsize)
    differ = (want.reshape(-1).view(np.uint8).reshape(rows) != got.reshape(-1).view(np.uint8).reshape(rows)).any(1)
    detail = ""
    if want.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            err = np.abs(got.astype(np.float64) - want.astype(np.float64))[differ.reshape(want.shape)]
        detail = f", max difference {np.nanmax(err) if np.isfinite(err).any() else float('nan'):.3g}"
    return f"{what}: {int(differ.sum())} of {want.size} entries differ bitwise{detail} (must regenerate bit for bit)"


def _compare_result(result: Verification, what: str, got: np.ndarray, want: np.ndarray, normalize: bool):
    """Compare a float64 result within the tolerance; record the largest difference and ratio."""
    outcome = compare.close(got, want, REGENERATION_TOLERANCE, normalize=normalize, what=what)
    finite = np.abs(want[np.isfinite(want)])
    peak = float(finite.max()) if normalize and finite.size else 0.0
    difference = (outcome.max_abs if outcome.max_abs is not None else float("nan")) / (peak if peak > 0 else 1.0)
    ratio = outcome.ratio if outcome.ratio is not None else float("inf")
    if not ratio <= result.worst_ratio:
        result.worst_ratio, result.worst = ratio, what
    if not difference <= result.max_difference:
        result.max_difference = difference
    if outcome.passed:
        result.inexact += 1
    else:
        relative = "of max|stored|" if normalize else "absolute"
        result.problems.append(f"{outcome.message}; max difference {difference:.3g} {relative}")


def verify(directory: str | None = None) -> list[str]:
    """Differences between the stored golden files and a fresh generation (empty: they reproduce).

    Integer and bool arrays, z, cotangent and codes must be equal bit for bit; the
    other float64 results must lie within `REGENERATION_TOLERANCE`.
    """
    return check(directory).problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfq.conformance.golden", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate the golden files")
    action.add_argument(
        "--check",
        action="store_true",
        help="compare the stored files with a fresh generation (float64 results within "
        "REGENERATION_TOLERANCE, the rest bit for bit)",
    )
    parser.add_argument("--dir", default=None, help="folder (default: the package's golden/)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(args.dir):
            print(path)
        return 0
    result = check(args.dir)
    for problem in result.problems:
        print(problem)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
