#!/usr/bin/env bash
# Installs what redrec needs at run time that cargo does not build: ONNX Runtime's shared
# library, taken from PyPI's pinned `onnxruntime` wheel and unpacked into .redrec/lib
# (or $REDREC_ORT_DIR). Nothing is downloaded at run time. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${REDREC_ORT_VERSION:-1.32.0}
lib=${REDREC_ORT_DIR:-.redrec/lib}
if [ -f "$lib/libonnxruntime.so" ] && [ "$(cat "$lib/VERSION" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$wheels" "onnxruntime==$version"
mkdir -p "$lib"
python3 - "$lib" "$wheels"/onnxruntime-*.whl <<'PY'
import os, shutil, sys, zipfile
lib, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not libs:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    for name in libs:
        with z.open(name) as src, open(os.path.join(lib, "libonnxruntime.so"), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
echo "$version" > "$lib/VERSION"
echo "ONNX Runtime $version installed in $lib"
