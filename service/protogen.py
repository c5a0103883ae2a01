"""Generate the Python stubs of `protos/wtabridge/v1/symbols.proto` into `service/_proto/`.

The stubs are committed so that serving needs no protoc. Run `python -m service.protogen`
after editing the proto, and `python -m service.protogen --check` to verify that the
committed stubs match it. The output depends on the grpcio-tools version, which stamps
its protobuf and grpcio versions into the files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_FILE", "PROTO_ROOT", "STUB_DIR", "STUB_FILES", "check", "generate"]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILE = "wtabridge/v1/symbols.proto"  # relative to PROTO_ROOT; also the descriptor's file name
STUB_DIR = Path(__file__).resolve().parent / "_proto"
STUB_FILES = ("__init__.py", "symbols_pb2.py", "symbols_pb2.pyi", "symbols_pb2_grpc.py")

# protoc imports the message module by its absolute proto package path. The stubs live
# inside the service package, so that import is made relative.
_ABSOLUTE_IMPORT = "from wtabridge.v1 import symbols_pb2 as"
_RELATIVE_IMPORT = "from . import symbols_pb2 as"

_PACKAGE_DOC = (
    '"""Stubs generated from protos/wtabridge/v1/symbols.proto by `python -m service.protogen`; do not edit."""\n'
)


class ProtogenError(RuntimeError):
    """protoc failed or produced files other than the expected ones."""


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the proto and write the stub package files into `out_dir`."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                f"--grpc_python_out={scratch}",
                PROTO_FILE,
            ]
        )
        if status != 0:
            raise ProtogenError(f"protoc failed with exit status {status} on {PROTO_ROOT / PROTO_FILE}")
        generated = Path(scratch) / Path(PROTO_FILE).parent
        texts = {"__init__.py": _PACKAGE_DOC}
        for name in STUB_FILES[1:]:
            source = generated / name
            if not source.is_file():
                raise ProtogenError(f"protoc did not write {name}")
            texts[name] = source.read_text(encoding="utf-8")

    grpc_module = texts["symbols_pb2_grpc.py"]
    if _ABSOLUTE_IMPORT not in grpc_module:
        raise ProtogenError(
            f"symbols_pb2_grpc.py has no line starting {_ABSOLUTE_IMPORT!r}; this protoc writes imports differently"
        )
    texts["symbols_pb2_grpc.py"] = grpc_module.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT)

    written = []
    for name, text in texts.items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check(stub_dir: Path = STUB_DIR) -> list[str]:
    """Regenerate into a temporary folder; return the names of stub files that differ."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        differing = []
        for name in STUB_FILES:
            committed = stub_dir / name
            if not committed.is_file() or committed.read_bytes() != (fresh / name).read_bytes():
                differing.append(name)
        return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.protogen",
        description=f"Generate the Python stubs of {PROTO_FILE} into {STUB_DIR.relative_to(ROOT)}/.",
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare the committed stubs with fresh ones; exit 1 on a difference"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            differing = check()
            if differing:
                print(
                    f"error: stale stubs in {STUB_DIR}: {', '.join(differing)}; run python -m service.protogen",
                    file=sys.stderr,
                )
                return 1
            return 0
        for path in generate(STUB_DIR):
            print(path.relative_to(ROOT))
    except ImportError:
        print("error: grpcio-tools is not installed; install it with pip install grpcio-tools", file=sys.stderr)
        return 1
    except (ProtogenError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
