#!/bin/bash
# Prints the packages (one a line) that own the shared libraries BINARY links, so that a runtime stage of
# the same distribution release installs exactly what the build stage linked (FFmpeg's libav*, whatever
# else a dependency pulls in) without a hand-kept list of sonames that differs between Debian 12 and
# Ubuntu 24.04. Run in the build stage, after the build:
#   docker/runtime-packages.sh target/release/ainern2d-worker > /out/runtime-packages.txt
# libcuda.so.1 and libnvidia-ml.so.1 come from the host's driver (the NVIDIA container toolkit mounts
# them): they are skipped when linked; any other library that no package owns is an error.
set -euo pipefail
binary=${1:?usage: runtime-packages.sh BINARY}
from_host='^(libcuda\.so\.1|libnvidia-ml\.so\.1)$'
linked=$(ldd "$binary") || { echo "runtime-packages: ldd $binary failed" >&2; exit 1; }
owners=() missing=0
# `ldd` lines: "libavcodec.so.59 => /usr/lib/x86_64-linux-gnu/libavcodec.so.59 (0x...)", or "=> not found".
while read -r soname arrow path _; do
  [ "$arrow" = "=>" ] || continue
  [[ $soname =~ $from_host ]] && continue
  if [ "$path" = not ]; then
    echo "runtime-packages: $binary needs $soname, which is not installed in the build stage" >&2
    missing=1
    continue
  fi
  # The owner of that path, else of the file it links to, else of a file of that name in any directory
  # (ldd may report /lib/... where the package installed /usr/lib/..., after the /usr merge).
  owner=
  for query in "$path" "$(readlink -f "$path")" "*/$(basename "$path")"; do
    owner=$(dpkg -S "$query" 2>/dev/null | head -n1 | cut -d: -f1) || true
    [ -z "$owner" ] || break
  done
  if [ -z "$owner" ]; then
    echo "runtime-packages: no package owns $path ($soname)" >&2
    missing=1
    continue
  fi
  owners+=("$owner")
done <<< "$linked"
[ "$missing" = 0 ] || exit 1
printf '%s\n' "${owners[@]}" | sort -u
