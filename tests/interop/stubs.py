"""Python stubs of the compute-driver contract, generated from proto/ at run time.

Nothing generated is committed: `python3 tests/interop/stubs.py OUT_DIR`
writes the modules into OUT_DIR (the Rust tests do this once into a temporary
directory), and `load()` imports them from there, or generates them into a
private temporary directory when no directory is given (standalone use).
"""

import argparse
import importlib
import importlib.resources
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto"
PROTOS = ("compute_driver.proto", "options.proto")

# Temporary directories made by load(); they live as long as the process.
_KEEP = []


def generate(out_dir):
    """Runs grpc_tools' bundled protoc on the contract; raises on failure."""
    from grpc_tools import protoc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # grpc_tools bundles google/protobuf/*.proto (struct.proto, descriptor.proto).
    with importlib.resources.as_file(importlib.resources.files("grpc_tools") / "_proto") as wkt:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={PROTO_DIR}",
            f"--proto_path={wkt}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *(str(PROTO_DIR / name) for name in PROTOS),
        ]
        code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {code} on {PROTO_DIR}")


def load(stubs_dir=None):
    """Imports (pb2, pb2_grpc) of the contract from stubs_dir, generating them if None."""
    if stubs_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="openshell-interop-stubs-")
        _KEEP.append(tmp)
        generate(tmp.name)
        stubs_dir = tmp.name
    sys.path.insert(0, str(stubs_dir))
    return (
        importlib.import_module("compute_driver_pb2"),
        importlib.import_module("compute_driver_pb2_grpc"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the generated modules into")
    args = parser.parse_args()
    try:
        generate(args.out_dir)
    except Exception as e:  # noqa: BLE001 - reported to the caller as one line
        print(f"stub generation failed: {e}", file=sys.stderr)
        return 1
    print(f"stubs written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
