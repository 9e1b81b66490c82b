#!/bin/bash
# Regenerate the containerd gRPC stubs in spegel_py/store/containerd/_api from the API .proto
# files shipped by Debian's golang-github-containerd-containerd-dev (containerd 1.6).
#
#   scripts/gen_protos.sh [OUTDIR]     default OUTDIR: spegel_py/store/containerd/_api
#
# Why this shape:
# - gogoproto / fieldpath options are Go-only code-generation hints: stripped. Proto package
#   names (containerd.services.content.v1 ...) are untouched, so the wire format is identical.
# - The sources are staged under spegel_py/store/containerd/_api/ so protoc writes
#   package-qualified imports and registers unique file names in protobuf's descriptor pool
#   (nothing else in the process can collide with them).
# - Only the services spegel-py uses (content, images, events, namespaces) and their deps.
# - tests/store/test_gen_protos.py runs this into a temp dir and diffs, so the stubs never drift.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/spegel_py/store/containerd/_api}
PY=${PYTHON:-$ROOT/.venv/bin/python}
SRC=${CONTAINERD_API_PROTOS:-/usr/share/gocode/src/github.com/containerd/containerd/api}
PKG=spegel_py/store/containerd/_api
FILES="types/descriptor.proto
services/content/v1/content.proto
services/images/v1/images.proto
services/events/v1/events.proto
services/namespaces/v1/namespace.proto
events/image.proto
events/content.proto"

[ -d "$SRC" ] || { echo "containerd API protos not found in $SRC (apt-get install golang-github-containerd-containerd-dev)" >&2; exit 1; }
STAGE=$(mktemp -d)
GEN=$(mktemp -d)
trap 'rm -rf "$STAGE" "$GEN"' EXIT
for f in $FILES; do
  mkdir -p "$STAGE/$PKG/$(dirname "$f")"
  sed -E \
    -e '/^import weak /d' \
    -e '/^[[:space:]]*option \((gogoproto|containerd\.plugin)\.[a-z_]+\)[^;]*;/d' \
    -e 's/[[:space:]]*\[\(gogoproto\.[^]]*\]//' \
    -e "s#import \"github.com/containerd/containerd/api/#import \"$PKG/#" \
    "$SRC/$f" >"$STAGE/$PKG/$f"
done
GRPC_PROTOS=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
(cd "$STAGE" && "$PY" -m grpc_tools.protoc -I. -I"$GRPC_PROTOS" \
  --python_out="$GEN" --grpc_python_out="$GEN" --pyi_out="$GEN" \
  $(for f in $FILES; do echo "$PKG/$f"; done))
# every directory is a regular package; the top one says what it is
find "$GEN/$PKG" -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
echo '"""Generated containerd API stubs (scripts/gen_protos.sh). Do not edit; private to store.containerd."""' \
  >"$GEN/$PKG/__init__.py"
# events/ holds only messages: protoc still writes empty *_pb2_grpc.py files; drop those without services
for f in $(find "$GEN/$PKG" -name '*_pb2_grpc.py'); do
  grep -q 'Stub(object)' "$f" || rm -f "$f"
done
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
cp -r "$GEN/$PKG" "$OUT"
echo "generated into $OUT" >&2
