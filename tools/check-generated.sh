#!/usr/bin/env bash
# Regenerates every generated shader into a scratch directory and fails if any
# differs from the file in shaders/: generated files must come from their
# generator as it stands. CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# The commands that made shaders/; tools/gen_matmul.py's docstring lists them too.
while read -r mode file args; do
    python3 tools/gen_matmul.py "$mode" "$scratch/$file" $args
done <<'LIST'
portable matmul.wgsl 32 32
subgroup matmul_subgroup_128x64.wgsl 128 8 direct
subgroup matmul_subgroup_64x64.wgsl 64 8 direct
subgroup matmul_subgroup_32x32.wgsl 32 4
texture matmul_texture_128x64.wgsl 128 8 direct
texture matmul_texture_64x32.wgsl 64 4 direct
texture_implicit matmul_texture_implicit_64x32.wgsl 64 4 direct
LIST

stale=0
for generated in "$scratch"/*.wgsl; do
    name=$(basename "$generated")
    if ! diff -u "shaders/$name" "$generated" >"$scratch/$name.diff"; then
        echo "shaders/$name differs from what tools/gen_matmul.py generates:" >&2
        head -40 "$scratch/$name.diff" >&2
        stale=1
    fi
done
# A matmul shader in shaders/ that the list above does not make.
for file in shaders/matmul*.wgsl; do
    if [ ! -e "$scratch/$(basename "$file")" ]; then
        echo "$file is not made by any command in tools/check-generated.sh" >&2
        stale=1
    fi
done
if [ "$stale" -ne 0 ]; then
    echo "regenerate with the commands in tools/check-generated.sh (or edit the generator, not the .wgsl)" >&2
    exit 1
fi
echo "generated shaders are current"
